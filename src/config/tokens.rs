//! `[http] tokens_file`: who may call the API, and with which scope.
//!
//! Only SHA-256 digests of the tokens are kept, so neither a debug print
//! nor a core dump of the scheduler shows a token; a presented token is
//! hashed and compared with every entry in constant time.

use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// What a token allows. Scopes nest: each allows what the ones before it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every `GET`.
    Read,
    /// Also start runs and cancel them.
    Trigger,
    /// Also pause and resume jobs.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Trigger => "trigger",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shorter tokens can be guessed by whoever reaches the port.
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens of a tokens file, as digests.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Tokens(Vec<([u8; 32], Scope)>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} entries)", self.0.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// One `TOKEN SCOPE` pair per line; blank lines and `#` comments are
    /// skipped. The error names the line, never the token.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = n + 1;
            let mut words = line.split_whitespace();
            let (Some(token), Some(scope), None) = (words.next(), words.next(), words.next())
            else {
                return Err(format!(
                    "line {at}: expected `TOKEN SCOPE` (two words: the token, then read, trigger or admin)"
                ));
            };
            let scope = match scope {
                "read" => Scope::Read,
                "trigger" => Scope::Trigger,
                "admin" => Scope::Admin,
                other => {
                    return Err(format!(
                        "line {at}: unknown scope {other:?}; expected read, trigger or admin"
                    ))
                }
            };
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {at}: the token is shorter than {MIN_TOKEN_LEN} characters; use a random one, e.g. `openssl rand -hex 32`"
                ));
            }
            let d = digest(token);
            if tokens.iter().any(|(e, _)| *e == d) {
                return Err(format!("line {at}: the same token is listed twice"));
            }
            tokens.push((d, scope));
        }
        if tokens.is_empty() {
            return Err("lists no token; add a line `TOKEN SCOPE`".to_string());
        }
        Ok(Tokens(tokens))
    }

    /// The scope of `presented`, if it is one of the tokens. Every entry
    /// is compared, each in constant time, so the answer's timing does not
    /// tell how much of a guess was right.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let d = digest(presented);
        let mut found = None;
        for (entry, scope) in &self.0 {
            if bool::from(entry.ct_eq(&d)) {
                found = Some(*scope);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_gives_each_token_its_scope_and_refuses_mistakes_by_line() {
        let t =
            Tokens::parse("# ops\n0123456789abcdef0123 admin\n\n  fedcba9876543210fedc   read  \n")
                .unwrap();
        assert_eq!(t.scope_of("0123456789abcdef0123"), Some(Scope::Admin));
        assert_eq!(t.scope_of("fedcba9876543210fedc"), Some(Scope::Read));
        assert_eq!(t.scope_of("fedcba9876543210fed"), None);
        assert!(!format!("{t:?}").contains("0123"));
        for (text, says) in [
            ("0123456789abcdef0123 wirte\n", "line 1: unknown scope \"wirte\"; expected read, trigger or admin"),
            ("#\n0123456789abcdef0123\n", "line 2: expected `TOKEN SCOPE` (two words: the token, then read, trigger or admin)"),
            ("short read\n", "line 1: the token is shorter than 16 characters; use a random one, e.g. `openssl rand -hex 32`"),
            ("0123456789abcdef0123 read\n0123456789abcdef0123 admin\n", "line 2: the same token is listed twice"),
            ("# nothing\n", "lists no token; add a line `TOKEN SCOPE`"),
        ] {
            assert_eq!(Tokens::parse(text).unwrap_err(), says, "{text:?}");
        }
        assert!(Scope::Read < Scope::Trigger && Scope::Trigger < Scope::Admin);
    }
}
