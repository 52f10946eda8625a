//! The one table `jitrec-bench all` ends with: every benchmark's headline figures beside their
//! reference and the goal they are held to, so a reader need not dig through each benchmark's
//! own output.

/// One figure.
pub(crate) struct Line {
    pub(crate) area: &'static str,
    pub(crate) figure: String,
    pub(crate) ours: String,
    pub(crate) reference: String,
    /// The ratio to the reference and/or whether the goal is met.
    pub(crate) verdict: String,
}

impl Line {
    pub(crate) fn new(
        area: &'static str,
        figure: impl Into<String>,
        ours: impl Into<String>,
        reference: impl Into<String>,
        verdict: impl Into<String>,
    ) -> Self {
        Self {
            area,
            figure: figure.into(),
            ours: ours.into(),
            reference: reference.into(),
            verdict: verdict.into(),
        }
    }

    /// `"0.42x, met (<= 0.25x)"` or `"... NOT met ..."`.
    pub(crate) fn goal(ratio: f64, met: bool, goal: &str) -> String {
        format!(
            "{ratio:.2}x, {} ({goal})",
            if met { "met" } else { "NOT met" }
        )
    }
}

/// Prints the table.
pub(crate) fn print(lines: &[Line]) {
    let w = |f: fn(&Line) -> usize, min: usize| lines.iter().map(f).max().unwrap_or(0).max(min);
    let (a, f, o, r) = (
        w(|l| l.area.len(), 4),
        w(|l| l.figure.len(), 6),
        w(|l| l.ours.len(), 6),
        w(|l| l.reference.len(), 9),
    );
    println!(
        "{:<a$}  {:<f$}  {:>o$}  {:>r$}  against reference / goal",
        "area", "figure", "jitrec", "reference"
    );
    println!("{}", "-".repeat(a + f + o + r + 32));
    for l in lines {
        println!(
            "{:<a$}  {:<f$}  {:>o$}  {:>r$}  {}",
            l.area, l.figure, l.ours, l.reference, l.verdict
        );
    }
}
