//! `${VAR}` and `${VAR:-default}` in the configuration text, so secrets stay in the environment.
//! `$$` writes a literal `$`. Runs on the raw text before parsing, which keeps line numbers intact.
//! Comment lines (first non-blank character `#`) are left as they are: a commented-out example
//! naming a variable needs no value.

/// A reference to an unset variable without a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVariable {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

/// Replace every reference using `lookup`; report every unset variable, not only the first.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<MissingVariable>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                continue;
            }
            let Some(body_and_rest) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let Some(close) = body_and_rest.find('}') else {
                out.push('$');
                rest = after;
                continue;
            };
            let body = &body_and_rest[..close];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    let column = line.len() - rest.len() + dollar + 1;
                    missing.push(MissingVariable { name: name.to_string(), line: line_index + 1, column });
                }
            }
            rest = &body_and_rest[close + 1..];
        }
        out.push_str(rest);
    }
    if missing.is_empty() { Ok(out) } else { Err(missing) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("secret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_and_defaults() {
        let text = "a: ${KEY}\nb: ${NOPE:-fallback}\nc: ${EMPTY:-x}\nd: $$HOME\ne: cost $5\n";
        assert_eq!(interpolate(text, env).unwrap(), "a: secret\nb: fallback\nc: \nd: $HOME\ne: cost $5\n");
    }

    #[test]
    fn comment_lines_are_left_alone() {
        let text = "# key: ${NOPE}\n  #   also: ${NOPE}\na: ${KEY} # ${KEY}\n";
        assert_eq!(interpolate(text, env).unwrap(), "# key: ${NOPE}\n  #   also: ${NOPE}\na: secret # secret\n");
    }

    #[test]
    fn lists_every_missing_variable_with_its_position() {
        let text = "a: ${ONE}\nb:  x ${TWO}\n";
        let missing = interpolate(text, env).unwrap_err();
        assert_eq!(
            missing,
            vec![
                MissingVariable { name: "ONE".into(), line: 1, column: 4 },
                MissingVariable { name: "TWO".into(), line: 2, column: 7 },
            ]
        );
    }
}
