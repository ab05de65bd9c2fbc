//! Typed reads of the `[cluster]` and `[http]` values: endpoints, the
//! listen address, the prefix, the lease TTL, credentials.

use super::*;

/// toml messages about array or inline table contents.
/// `ip` with the default metrics port, bracketed if it is IPv6.
pub(super) fn example_listen(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:9187")
    } else {
        format!("{ip}:9187")
    }
}

impl<'a, 'i> Item<'a, 'i> {
    /// `etcd`: every endpoint checked, each problem at its element.
    pub(super) fn endpoints(&self, r: &mut Report) -> Option<Vec<String>> {
        let hint = |v: &DeValue| match v {
            DeValue::String(_) => " (put it in brackets, even a single one)",
            _ => "",
        };
        let array = self.non_empty_array(
            r,
            &format!("an array of URLs like [\"{EXAMPLE_ENDPOINT}\"]"),
            hint,
            || format!("etcd must list at least one endpoint, e.g. [\"{EXAMPLE_ENDPOINT}\"]"),
        )?;
        let mut all_valid = true;
        // (normalized, as written, where)
        let mut valid: Vec<(String, &str, usize)> = Vec::with_capacity(array.len());
        for (index, element) in array.iter().enumerate() {
            let item = Item {
                label: Cow::Owned(format!("etcd[{index}]")),
                key_at: element.span().start,
                value: element,
            };
            let Some(written) = item.str(r) else {
                all_valid = false;
                continue;
            };
            match endpoint(written) {
                Ok(url) if valid.iter().any(|(seen, _, _)| *seen == url) => {
                    r.error(
                        item.value_at(),
                        format!("etcd endpoint {} is listed twice", quoted(written)),
                    );
                    all_valid = false;
                }
                Ok(url) => valid.push((url, written, item.value_at())),
                Err(message) => {
                    r.error(item.value_at(), message);
                    all_valid = false;
                }
            }
        }
        // The client speaks TLS to every endpoint or to none.
        let tls = |url: &str| url.starts_with("https://");
        if let Some((first, rest)) = valid.split_first() {
            if let Some((url, written, at)) =
                rest.iter().find(|(url, _, _)| tls(url) != tls(&first.0))
            {
                let scheme = |url: &str| if tls(url) { "https://" } else { "http://" };
                r.error(
                    *at,
                    format!(
                        "etcd endpoint {} uses {} but {} uses {}; use the same scheme for every endpoint",
                        quoted(written),
                        scheme(url),
                        quoted(first.1),
                        scheme(&first.0)
                    ),
                );
                return None;
            }
        }
        all_valid.then(|| valid.into_iter().map(|(url, _, _)| url).collect())
    }

    /// `listen`: a socket address, not a host name: the server binds
    /// before anything is resolved, and a name with several addresses
    /// would leave it unclear which one is served.
    pub(super) fn listen(&self, r: &mut Report) -> Option<std::net::SocketAddr> {
        let s = self.str(r)?;
        if let Ok(addr) = s.trim().parse() {
            return Some(addr);
        }
        let hint = match s.trim() {
            "" => String::new(),
            t if t.parse::<std::net::IpAddr>().is_ok() => {
                format!("; add a port, e.g. {}", quoted(&example_listen(t)))
            }
            t if t.starts_with(':') && t[1..].parse::<u16>().is_ok() => {
                format!(
                    "; name the address too, e.g. {}",
                    quoted(&format!("0.0.0.0{t}"))
                )
            }
            t => match t.rsplit_once(':') {
                Some((_, port)) if port.parse::<u16>().is_err() && port.parse::<u64>().is_ok() => {
                    "; the port must be at most 65535".to_string()
                }
                Some(("localhost", port)) if port.parse::<u16>().is_ok() => {
                    format!(
                        "; for localhost write {}",
                        quoted(&format!("127.0.0.1:{port}"))
                    )
                }
                _ => String::new(),
            },
        };
        r.error(
            self.value_at(),
            format!(
                "{} {} is not an IP address and port like \"127.0.0.1:9187\" or \"[::1]:9187\"{hint}",
                self.label,
                quoted(s)
            ),
        );
        None
    }

    /// `prefix`: keys are built as `{prefix}/...`.
    pub(super) fn prefix(&self, r: &mut Report) -> Option<String> {
        let s = self.str(r)?;
        let like = || match s.trim_matches('/') {
            "" => quoted(crate::config::DEFAULT_PREFIX),
            inner => quoted(&format!("/{inner}")),
        };
        let problem = if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            format!(
                "prefix {} must not contain whitespace or control characters",
                quoted(s)
            )
        } else if !s.starts_with('/') {
            format!("prefix {} must start with '/', like {}", quoted(s), like())
        } else if s.ends_with('/') {
            format!(
                "prefix {} must not end with '/', like {}",
                quoted(s),
                like()
            )
        } else if s.chars().count() > MAX_PREFIX_LEN {
            format!(
                "prefix is {} characters long, at most {MAX_PREFIX_LEN} are allowed",
                s.chars().count()
            )
        } else {
            return Some(s.to_owned());
        };
        r.error(self.value_at(), problem);
        None
    }

    pub(super) fn lease_ttl(&self, r: &mut Report) -> Option<Duration> {
        let d = self.duration(r)?;
        let written = quoted(as_str(self.value()).unwrap_or_default());
        let problem = if !LEASE_TTL_RANGE.contains(&d) {
            format!(
                "{} must be between {} and {} (how long a failover waits for a crashed leader), found {written}",
                self.label,
                humantime::format_duration(*LEASE_TTL_RANGE.start()),
                humantime::format_duration(*LEASE_TTL_RANGE.end()),
            )
        } else if d.subsec_nanos() != 0 {
            // Rounded silently, the lease would expire before the replica
            // expects it to.
            format!(
                "{} must be a whole number of seconds (etcd grants leases in seconds), found {written}",
                self.label
            )
        } else {
            return Some(d);
        };
        r.error(self.value_at(), problem);
        None
    }

    pub(super) fn max_clock_skew(&self, r: &mut Report) -> Option<Duration> {
        let d = self.duration(r)?;
        if MAX_CLOCK_SKEW_RANGE.contains(&d) {
            return Some(d);
        }
        r.error(
            self.value_at(),
            format!(
                "{} must be between {} and {} (how far a replica's clock may be off the others' before it stops leading), found {}",
                self.label,
                humantime::format_duration(*MAX_CLOCK_SKEW_RANGE.start()),
                humantime::format_duration(*MAX_CLOCK_SKEW_RANGE.end()),
                quoted(as_str(self.value()).unwrap_or_default()),
            ),
        );
        None
    }

    /// A file the etcd client will read, resolved against `base` and opened
    /// now so that a wrong path is reported here, located.
    pub(super) fn readable_file(&self, r: &mut Report, base: &Path) -> Option<PathBuf> {
        let path = resolved(base, self.path(r)?);
        if let Err(reason) = open_readable(&path) {
            r.error(
                self.value_at(),
                format!(
                    "{} {} cannot be read: {reason}",
                    self.label,
                    quoted(&path.display().to_string())
                ),
            );
            return None;
        }
        Some(path)
    }

    pub(super) fn user(&self, r: &mut Report) -> Option<String> {
        let user = self.str(r)?;
        if user.is_empty() {
            r.error(
                self.value_at(),
                "user must not be empty (leave it out to connect without authentication)",
            );
            return None;
        }
        Some(user.to_owned())
    }

    /// The password itself never reaches a message; only the variable's
    /// name does, and only when it looks like one.
    pub(super) fn password_env(&self, r: &mut Report) -> Option<Secret> {
        let name = self.str(r)?;
        if !is_env_name(name) {
            r.error(
                self.value_at(),
                format!(
                    "{} must be the name of an environment variable, like \"BGSCHED_ETCD_PASSWORD\", \
                     not the password itself",
                    self.label
                ),
            );
            return None;
        }
        let problem = match std::env::var(name) {
            Ok(password) if !password.is_empty() => return Some(Secret::new(password)),
            Ok(_) => "is set but empty",
            Err(VarError::NotPresent) => "is not set in the environment",
            Err(VarError::NotUnicode(_)) => "holds a value that is not valid UTF-8",
        };
        r.error(
            self.value_at(),
            format!("{} {} {problem}", self.label, quoted(name)),
        );
        None
    }

    /// `[http] tokens_file`: read and checked now, so a broken file stops
    /// `check` and `run` with its line, not the first API call.
    pub(super) fn tokens_file(&self, r: &mut Report, base: &Path) -> Option<(PathBuf, Tokens)> {
        let path = resolved(base, self.path(r)?);
        let mut text = String::new();
        let read = open_readable(&path).and_then(|file| {
            file.take(MAX_TOKENS_FILE_SIZE + 1)
                .read_to_string(&mut text)
                .map_err(|e| e.to_string())
        });
        let problem = match read {
            Err(reason) => format!("cannot be read: {reason}"),
            Ok(n) if n as u64 > MAX_TOKENS_FILE_SIZE => {
                format!("is larger than {} KiB", MAX_TOKENS_FILE_SIZE / 1024)
            }
            Ok(_) => match Tokens::parse(&text) {
                Ok(tokens) => return Some((path, tokens)),
                Err(why) => why,
            },
        };
        r.error(
            self.value_at(),
            format!(
                "{} {}: {problem}",
                self.label,
                quoted(&path.display().to_string())
            ),
        );
        None
    }

    /// The file's content without its trailing line break; the content
    /// never reaches a message, only the file's name does. (Also a
    /// webhook's `secret_file`.)
    pub(super) fn password_file(&self, r: &mut Report, base: &Path) -> Option<Secret> {
        let path = resolved(base, self.path(r)?);
        let mut bytes = Vec::new();
        let read = open_readable(&path).and_then(|file| {
            file.take(MAX_PASSWORD_FILE_SIZE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| e.to_string())
        });
        let problem = match read {
            Err(reason) => format!("cannot be read: {reason}"),
            Ok(_) if bytes.len() as u64 > MAX_PASSWORD_FILE_SIZE => format!(
                "is larger than {} KiB; it should hold only the {}",
                MAX_PASSWORD_FILE_SIZE / 1024,
                if self.label.starts_with("secret") {
                    "secret"
                } else {
                    "password"
                }
            ),
            Ok(_) => match String::from_utf8(bytes) {
                Err(_) => "is not valid UTF-8".to_string(),
                Ok(mut password) => {
                    password.truncate(password.trim_end_matches(['\n', '\r']).len());
                    if !password.is_empty() {
                        return Some(Secret::new(password));
                    }
                    "is empty".to_string()
                }
            },
        };
        r.error(
            self.value_at(),
            format!(
                "{} {} {problem}",
                self.label,
                quoted(&path.display().to_string())
            ),
        );
        None
    }
}
