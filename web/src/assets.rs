//! The page shell, script, style sheet and icon, embedded in the binary so the dashboard works
//! offline (no CDN, no build step).

/// The single page shell every page path serves.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The page script.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The operator views' script (history, diagram, live-update coalescing), after `app.js`.
pub const HISTORY_JS: &str = include_str!("../assets/history.js");
/// The operator tools' script (verified entry view, ledger search, exports, incidents).
pub const OPS_JS: &str = include_str!("../assets/ops.js");
/// The style sheet.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
/// The favicon.
pub const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// An asset by file name: (content type, body).
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "history.js" => Some(("text/javascript; charset=utf-8", HISTORY_JS)),
        "ops.js" => Some(("text/javascript; charset=utf-8", OPS_JS)),
        "style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        "favicon.svg" => Some(("image/svg+xml", FAVICON_SVG)),
        _ => None,
    }
}

/// The server-rendered login page (no script), with an optional error sentence.
pub fn login_html(error: Option<&str>) -> String {
    let error = error
        .map(|e| {
            format!(
                "<p id=\"login-error\" class=\"banner\" role=\"alert\">{}</p>\n",
                escape(e)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · gridmesh dashboard</title>
<link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/assets/style.css">
</head>
<body>
<header class="top"><div class="brand"><img src="/assets/favicon.svg" alt="" width="28" height="28"><span>gridmesh</span></div></header>
<main id="main" class="login">
<h1>Log in</h1>
{error}<form id="login-form" method="post" action="/login">
<p><label for="name">User name</label><br><input id="name" name="name" autocomplete="username" required autofocus></p>
<p><label for="password">Password</label><br><input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><button type="submit">Log in</button></p>
</form>
<p class="lede">Users are created by the operator with <code>gridmesh-web user add</code>.</p>
</main>
</body>
</html>
"#
    )
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
