//! What `--serve-hba` and `--serve-ident` share, as pg_hba.conf and
//! pg_ident.conf do: reading the file, then one rule a line, fields split on
//! whitespace, `#` to the end of the line a comment, blank lines skipped.

use std::fmt::Display;
use std::path::Path;

/// Reads `path` and parses it with `parse`; errors name the file.
pub fn load<T, E: Display>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
    parse(&text).map_err(|e| format!("\"{}\": {e}", path.display()))
}

/// The lines holding a rule: (line number from 1, fields).
pub fn rules(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let content = raw.split('#').next().unwrap_or("");
        let fields: Vec<&str> = content.split_whitespace().collect();
        (!fields.is_empty()).then_some((i + 1, fields))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = "# a comment\n\n  a b\tc  # trailing\n   \nd\n";
        let got: Vec<_> = rules(text).collect();
        assert_eq!(got, [(3, vec!["a", "b", "c"]), (5, vec!["d"])]);
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.conf");
        let e = load(&path, |t| Ok::<_, String>(t.len())).unwrap_err();
        assert!(
            e.starts_with("cannot read \"") && e.contains("x.conf"),
            "{e}"
        );
        std::fs::write(&path, "bad").unwrap();
        let e = load(&path, |_| Err::<(), _>("line 1: no")).unwrap_err();
        assert!(e.ends_with("x.conf\": line 1: no"), "{e}");
    }
}
