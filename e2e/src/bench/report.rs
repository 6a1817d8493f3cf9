//! What a scenario reports: rows for the printed table (with targets and anchors) and raw
//! figures for the JSON file.

use serde_json::{Value, json};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// The figure, formatted with its unit.
    pub value: String,
    /// The target it is held to, if any (e.g. "≤ 1.5 s").
    pub target: String,
    /// Whether the target is met (`None`: no target).
    pub met: Option<bool>,
    /// Figures of other systems to compare with.
    pub anchor: String,
}

impl Row {
    /// A figure without a target.
    pub fn info(metric: impl Into<String>, value: impl Into<String>) -> Self {
        Row {
            metric: metric.into(),
            value: value.into(),
            target: String::new(),
            met: None,
            anchor: String::new(),
        }
    }

    /// A figure held to `target`.
    pub fn target(
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Self {
        Row {
            target: target.into(),
            met: Some(met),
            ..Row::info(metric, value)
        }
    }

    /// Adds an anchor.
    pub fn anchor(mut self, anchor: impl Into<String>) -> Self {
        self.anchor = anchor.into();
        self
    }
}

/// The outcome of one scenario.
#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// Table rows.
    pub rows: Vec<Row>,
    /// Setup and caveats, printed under the table.
    pub notes: Vec<String>,
    /// Raw figures for the JSON file.
    pub raw: Value,
}

impl ScenarioReport {
    /// An empty report for `name`.
    pub fn new(name: &str) -> Self {
        ScenarioReport {
            name: name.to_string(),
            raw: json!({}),
            ..Default::default()
        }
    }

    /// Adds a row.
    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Sets raw field `key`.
    pub fn set(&mut self, key: &str, value: Value) {
        if let Value::Object(m) = &mut self.raw {
            m.insert(key.to_string(), value);
        }
    }

    /// As printable text: a table plus notes.
    pub fn render(&self) -> String {
        let headers = ["metric", "value", "target", "met", "anchor"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.metric.clone(),
                    r.value.clone(),
                    r.target.clone(),
                    match r.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                    r.anchor.clone(),
                ]
            })
            .collect();
        let mut width = headers.map(|h| h.chars().count());
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                width[i] = width[i].max(s.chars().count());
            }
        }
        let line = |c: &[String; 5]| {
            let mut s = String::from("|");
            for (i, v) in c.iter().enumerate() {
                s.push_str(&format!(" {v:<w$} |", w = width[i]));
            }
            s.push('\n');
            s
        };
        let mut out = format!("== {} ==\n", self.name);
        out.push_str(&line(&headers.map(String::from)));
        out.push_str(&line(&width.map(|w| "-".repeat(w))));
        for c in &cells {
            out.push_str(&line(c));
        }
        for n in &self.notes {
            out.push_str(&format!("  - {n}\n"));
        }
        out
    }

    /// As JSON (rows, notes and raw figures).
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.name,
            "rows": self.rows.iter().map(|r| json!({
                "metric": r.metric, "value": r.value, "target": r.target,
                "met": r.met, "anchor": r.anchor,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "raw": self.raw,
        })
    }
}

/// Formats milliseconds as `123 ms` or `1.23 s`.
pub fn ms(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.2} s", v / 1000.0)
    }
}
