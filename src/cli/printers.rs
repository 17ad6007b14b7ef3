//! Output formats of `wkctl`: aligned tables of the server's Table rows
//! (the columns come from the API server, `api::printers`), YAML.

use serde_json::Value;

/// Output format of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
    Name,
}

pub use crate::api::printers::{age, cell_text, human_duration};

/// Render rows as an aligned table (three spaces between columns, as kubectl).
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut width = vec![0; cols];
    for r in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate().take(cols) {
            if i + 1 == cols {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// YAML for `-o yaml`.
pub fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME".into(), "AGE".into()],
            &[vec!["a-long-name".into(), "5s".into()]],
        );
        assert_eq!(t, "NAME          AGE\na-long-name   5s\n");
    }
}
