//! The located-error report: every problem with its line:column, syntax
//! errors said in words, and suggestions for misspelt names.

use super::*;

/// Past this, the file is most likely not a config at all.
pub(super) const MAX_SYNTAX_ERRORS: usize = 20;

/// Suggestions are only looked for when the input is at most this long:
/// longer than any key or zone name, it is no typo of one, and the edit
/// distance, which takes time and memory in the product of the lengths,
/// would make a pasted blob take minutes to check.
pub(super) const MAX_SUGGESTION_INPUT: usize = 64;

/// The candidate a typo most likely meant: a small edit distance (scaled to
/// the length), ignoring case, or one name being a prefix of the other
/// (`working_directory` for `working_dir`).
pub(super) fn did_you_mean<'c>(
    input: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    if input.chars().count() > MAX_SUGGESTION_INPUT {
        return None;
    }
    let input = input.to_lowercase();
    let allowed = match input.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .filter_map(|c| {
            let lower = c.to_lowercase();
            let distance = strsim::damerau_levenshtein(&input, &lower);
            let (short, long) = if input.len() < lower.len() {
                (&input, &lower)
            } else {
                (&lower, &input)
            };
            let prefix = short.len() >= 3 && long.starts_with(short.as_str());
            (distance <= allowed || prefix).then_some((distance, c))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// Besides typos, people often write just the city (`Berlin`) or get the
/// case wrong (`europe/berlin`), which plain edit distance ranks poorly.
pub(super) fn closest_time_zone(input: &str) -> Option<&'static str> {
    if input.chars().count() > MAX_SUGGESTION_INPUT {
        return None;
    }
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    if let Some(exact) = names().find(|n| n.eq_ignore_ascii_case(input)) {
        return Some(exact);
    }
    let city = input.replace(' ', "_");
    if let Some(by_city) = names().find(|n| {
        n.contains('/')
            && n.rsplit('/')
                .next()
                .is_some_and(|c| c.eq_ignore_ascii_case(&city))
    }) {
        return Some(by_city);
    }
    let input_lower = input.to_lowercase();
    let allowed = (input.chars().count() / 5).clamp(1, 3);
    names()
        .map(|n| {
            (
                strsim::damerau_levenshtein(&input_lower, &n.to_lowercase()),
                n,
            )
        })
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, n)| n)
}

/// Collects errors as byte offsets while the tree is walked (in whatever
/// order the table maps yield keys), then sorts them into file order and
/// converts to line:column once at the end.
pub(super) struct Report<'t> {
    pub(super) file: String,
    pub(super) text: &'t str,
    /// The job the errors being reported belong to, if any.
    pub(super) job: Option<String>,
    pub(super) found: Vec<Found>,
}

pub(super) struct Found {
    /// `None` when the parser could not say where (sorted first).
    pub(super) at: Option<usize>,
    pub(super) job: Option<String>,
    pub(super) message: String,
}

/// toml's message for a dotted key or table name of more parts than
/// [`MAX_KEY_DOTS`] allows; it comes without a position.
pub(super) const TOO_MANY_PARTS: &str = "recursion limit";

/// toml refuses a dotted key or table name with this many dots (81 parts).
pub(super) const MAX_KEY_DOTS: usize = 80;

/// Where each dotted key or table name of [`MAX_KEY_DOTS`] dots or more
/// starts, in file order: a dot-separated run of bare or quoted keys outside
/// strings and comments, which is what such a key is. Other uses of dots
/// (floats, times, strings) never reach that many in one run.
pub(super) fn long_dotted_keys(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    // The start of the current run of keys, and the dots in it so far.
    let mut run: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                run = None;
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            b'"' | b'\'' if bytes[i..].starts_with(&[b, b, b]) => {
                // A multi-line string is a value, never a key.
                run = None;
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(&[b, b, b]) {
                    i += if b == b'"' && bytes[i] == b'\\' { 2 } else { 1 };
                }
                // Up to two quotes may close the content before the three.
                i += 3;
                while i < bytes.len() && bytes[i] == b {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                run.get_or_insert((i, 0));
                i += 1;
                while i < bytes.len() && bytes[i] != b && bytes[i] != b'\n' {
                    i += if b == b'"' && bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'.' => {
                if let Some((start, dots)) = &mut run {
                    *dots += 1;
                    if *dots == MAX_KEY_DOTS {
                        starts.push(*start);
                    }
                }
            }
            b' ' | b'\t' => {}
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | 0x80.. => {
                run.get_or_insert((i, 0));
            }
            _ => run = None,
        }
        i += 1;
    }
    starts
}

/// Byte offset to 1-based line:column, the column counted in characters as
/// editors do. A leading byte-order mark is not a column.
pub(super) struct Lines<'t> {
    pub(super) text: &'t str,
    pub(super) starts: Vec<usize>,
}

impl<'t> Report<'t> {
    pub(super) fn new(path: &Path, text: &'t str) -> Self {
        Report {
            file: path.display().to_string(),
            text,
            job: None,
            found: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, at: usize, message: impl Into<String>) {
        self.error_at(Some(at), message);
    }

    pub(super) fn error_at(&mut self, at: Option<usize>, message: impl Into<String>) {
        self.found.push(Found {
            at,
            job: self.job.clone(),
            message: message.into(),
        });
    }

    /// Runs `f` with errors attributed to job `name`. The name is escaped,
    /// since an invalid one may hold quotes or control characters, and
    /// shortened like any other user string.
    pub(super) fn in_job<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let shown = quoted(name);
        self.job = Some(shown[1..shown.len() - 1].to_string());
        let result = f(self);
        self.job = None;
        result
    }

    pub(super) fn has_errors(&self) -> bool {
        !self.found.is_empty()
    }

    /// Syntax errors in file order, up to the first one inside an array or
    /// inline table: those may span lines, so after an unclosed bracket
    /// toml's recovery reads the rest of the file as its contents and
    /// complains about every later line.
    pub(super) fn syntax_errors(&mut self, errors: Vec<toml::de::Error>) {
        // toml gives a key of too many parts no position: such errors take
        // the places of the long keys, one each, in file order.
        let mut long_keys = None;
        let mut last_long_key = None;
        let mut found: Vec<(Option<usize>, &toml::de::Error)> = errors
            .iter()
            .map(|e| {
                let at = e.span().map(|s| s.start).or_else(|| {
                    if e.message() != TOO_MANY_PARTS {
                        return None;
                    }
                    let next = long_keys
                        .get_or_insert_with(|| long_dotted_keys(self.text).into_iter())
                        .next();
                    last_long_key = next.or(last_long_key);
                    last_long_key
                });
                (at, e)
            })
            .collect();
        // toml reports parser errors before document errors (duplicates).
        found.sort_by_key(|(at, _)| *at);
        let mut reported = Vec::new();
        for (at, e) in found {
            let reason = self.syntax_reason(e);
            if reported.contains(&(at, reason.clone())) {
                continue;
            }
            if reported.len() == MAX_SYNTAX_ERRORS {
                self.error_at(at, "too many TOML syntax errors; fix the ones above first");
                break;
            }
            self.error_at(at, format!("invalid TOML: {reason}"));
            reported.push((at, reason));
            if in_brackets(e.message()) {
                break;
            }
        }
    }

    /// toml's `Display` draws a multi-line snippet; the message alone is the
    /// reason, to which the offending text is added where toml leaves it out.
    pub(super) fn syntax_reason(&self, e: &toml::de::Error) -> String {
        let reason = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let snippet = e
            .span()
            .and_then(|s| self.text.get(s))
            .filter(|s| !s.is_empty());
        let at = e.span().map_or(0, |s| s.start);
        let line_start = self
            .text
            .get(..at)
            .and_then(|b| b.rfind('\n'))
            .map_or(0, |i| i + 1);
        let in_header = self
            .text
            .get(line_start..)
            .is_some_and(|line| line.trim_start().starts_with('['));
        let at_line_start = self
            .text
            .get(line_start..at)
            .is_some_and(|before| before.trim().is_empty());
        let rest_of_line = self
            .text
            .get(at..)
            .and_then(|rest| rest.lines().next())
            .unwrap_or("")
            .trim();
        // Raw control characters are allowed nowhere but tab and line ends;
        // toml stops at one with a reason about what it expected instead.
        let control = e
            .span()
            .and_then(|s| self.text.get(s.start..))
            .and_then(|rest| rest.chars().next())
            .filter(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
        match control {
            Some('\0') => return "NUL byte (\\0) is not allowed in a TOML file".to_string(),
            Some(c) => {
                return format!(
                    "control character U+{:04X} is not allowed in a TOML file \
                     (in a string, write it as \\u{:04X})",
                    u32::from(c),
                    u32::from(c)
                )
            }
            None => {}
        }
        match (reason.as_str(), snippet) {
            ("duplicate key", Some(key)) if in_header => {
                format!("duplicate table: `{}` is already defined above", shown(key))
            }
            ("duplicate key", Some(key)) => {
                format!(
                    "duplicate key `{}`; a key may appear only once in a table",
                    shown(key)
                )
            }
            (r, _) if r.starts_with("string values must be quoted") && rest_of_line.is_empty() => {
                "missing value after `=`".to_string()
            }
            (TOO_MANY_PARTS, _) => "a dotted key or table name has too many parts".to_string(),
            (r, _) if in_brackets(r) && at_line_start => {
                format!("{r} (or is the `]` or `}}` closing an earlier line missing?)")
            }
            (r, _) if r.starts_with("cannot recurse further") => {
                "arrays or inline tables are nested too deeply".to_string()
            }
            _ => reason,
        }
    }

    pub(super) fn into_errors(mut self) -> ConfigErrors {
        // Stable: errors at one spot keep the order they were checked in.
        self.found.sort_by_key(|f| f.at);
        self.found
            .dedup_by(|a, b| a.at == b.at && a.message == b.message);
        let lines = Lines::new(self.text);
        let file = self.file;
        ConfigErrors(
            self.found
                .into_iter()
                .map(|f| {
                    let (line, column) = f.at.map_or((0, 0), |at| lines.position(at));
                    ConfigError {
                        file: file.clone(),
                        line,
                        column,
                        job: f.job,
                        message: f.message,
                    }
                })
                .collect(),
        )
    }
}

impl<'t> Lines<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        let before = &self.text[start..offset];
        let before = if start == 0 {
            before.strip_prefix('\u{feff}').unwrap_or(before)
        } else {
            before
        };
        (line, before.chars().count() + 1)
    }
}
