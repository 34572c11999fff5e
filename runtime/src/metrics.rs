//! Prometheus text exposition (format 0.0.4): the one encoder every service's `/metrics` uses.
//!
//! Services keep their counters themselves (atomics); at scrape time they describe each family
//! here. Names follow `gridmesh_<service>_<name>_<unit>[_total]`.
//!
//! ```
//! use gridmesh_runtime::metrics::{Exposition, MetricKind};
//! let mut e = Exposition::new();
//! e.single("gridmesh_demo_up", MetricKind::Gauge, "Whether the demo runs.", 1);
//! e.family("gridmesh_demo_errors_total", MetricKind::Counter, "Errors by service.")
//!     .sample(&[("service", "market")], 2)
//!     .sample(&[("service", "settlement")], 0);
//! assert!(e.finish().contains("gridmesh_demo_errors_total{service=\"market\"} 2\n"));
//! ```

use std::fmt::{Display, Write};

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// One family's samples, written right after its HELP and TYPE lines.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: writes its HELP and TYPE lines; add samples to the returned builder.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) -> Family<'_> {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        Family {
            out: &mut self.out,
            name: name.to_owned(),
        }
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: MetricKind, help: &str, value: impl Display) {
        self.family(name, kind, help).sample(&[], value);
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }
}

impl Family<'_> {
    /// Adds a sample with these labels (values are escaped as the format requires).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let val = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{key}=\"{val}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_labels_and_escaping() {
        let mut e = Exposition::new();
        e.single("a_total", MetricKind::Counter, "Line one\nline two.", 3);
        e.family("b", MetricKind::Gauge, "By device.")
            .sample(&[("device", "meter \"1\"")], 1.5)
            .sample(&[("device", "inv"), ("unit", "3")], 0);
        assert_eq!(
            e.finish(),
            "# HELP a_total Line one\\nline two.\n# TYPE a_total counter\na_total 3\n\
             # HELP b By device.\n# TYPE b gauge\nb{device=\"meter \\\"1\\\"\"} 1.5\n\
             b{device=\"inv\",unit=\"3\"} 0\n"
        );
    }
}
