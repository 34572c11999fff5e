//! The page shell, script, style sheet and icon, embedded in the binary so the dashboard works
//! offline (no CDN, no build step).

/// The single page shell every page path serves.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The page script.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The style sheet.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
/// The favicon.
pub const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// An asset by file name: (content type, body).
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        "favicon.svg" => Some(("image/svg+xml", FAVICON_SVG)),
        _ => None,
    }
}
