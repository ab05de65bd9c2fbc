//! The `[cluster]` section: its keys, and whether TLS and credentials fit
//! together with the endpoints.

use super::*;
use crate::config::{DEFAULT_LEASE_TTL, DEFAULT_MAX_CLOCK_SKEW, DEFAULT_PREFIX};

/// Every etcd key starts with the prefix; a longer one is a pasted mistake.
pub(super) const MAX_PREFIX_LEN: usize = 256;

/// A replica renews its lease several times per TTL and stops acting as
/// leader well before it expires: below 2s one slow round trip to etcd costs
/// the leadership; above 10m a crashed leader stalls every schedule that long.
pub(super) const LEASE_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(10 * 60);

/// Skew is measured through etcd watch events, whose delivery takes a few
/// milliseconds and, on a loaded host, up to about a hundred: a tighter
/// bound would take correct clocks for skewed ones. A looser one than a
/// minute lets ticks fire a minute off, which no schedule means.
pub(super) const MAX_CLOCK_SKEW_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);
/// In cluster mode the default catchup covers a failover: the next leader
/// takes over up to one lease TTL after the old one died, plus this much to
/// notice, start up and read the state.
pub(super) const FAILOVER_MARGIN: Duration = Duration::from_secs(10);

pub(super) const EXAMPLE_ENDPOINT: &str = "http://10.0.0.5:2379";

/// etcd's client port, suggested when an endpoint has none.
pub(super) const ETCD_CLIENT_PORT: u16 = 2379;

/// A password file holds one line; anything this big is the wrong file
/// (or a device like /dev/zero, which would never end).
pub(super) const MAX_PASSWORD_FILE_SIZE: u64 = 64 * 1024;
/// A tokens file holds a few lines; a bigger one is the wrong file.
pub(super) const MAX_TOKENS_FILE_SIZE: u64 = 1024 * 1024;

/// Checks `[cluster]` completely, even after its first problem, and returns
/// it only if it is fully valid. `base` is the directory relative file
/// names are resolved against.
pub(super) fn cluster(r: &mut Report, item: &Item, base: &Path) -> Option<ClusterSettings> {
    let hint = |v: &DeValue| match v {
        DeValue::Array(_) => " (write [cluster], not [[cluster]])",
        _ => "",
    };
    let table = item.expect(r, "a table", hint, |v| match v {
        DeValue::Table(t) => Some(t),
        _ => None,
    })?;
    let f = ClusterKeys::of(r, table);

    let endpoints = match f.etcd.as_ref() {
        Some(i) => i.endpoints(r),
        None => {
            r.error(
                item.key_at,
                format!(
                    "missing etcd; add the etcd endpoints, e.g. etcd = [\"{EXAMPLE_ENDPOINT}\"]"
                ),
            );
            None
        }
    };
    let prefix = f
        .prefix
        .as_ref()
        .map_or(Some(DEFAULT_PREFIX.to_owned()), |i| i.prefix(r));
    let lease_ttl = f
        .lease_ttl
        .as_ref()
        .map_or(Some(DEFAULT_LEASE_TTL), |i| i.lease_ttl(r));
    let max_clock_skew = f
        .max_clock_skew
        .as_ref()
        .map_or(Some(DEFAULT_MAX_CLOCK_SKEW), |i| i.max_clock_skew(r));

    // `Some(None)`: not set; `None`: set but invalid (already reported).
    let mut file =
        |item: Option<&Item>| item.map_or(Some(None), |i| i.readable_file(r, base).map(Some));
    let ca_file = file(f.ca_file.as_ref());
    let cert_file = file(f.cert_file.as_ref());
    let key_file = file(f.key_file.as_ref());
    let tls_ok = tls_fits(
        r,
        [
            f.ca_file.as_ref(),
            f.cert_file.as_ref(),
            f.key_file.as_ref(),
        ],
        endpoints.as_deref(),
    );

    let user = f.user.as_ref().map_or(Some(None), |i| i.user(r).map(Some));
    let from_env = f
        .password_env
        .as_ref()
        .map_or(Some(None), |i| i.password_env(r).map(Some));
    let from_file = f
        .password_file
        .as_ref()
        .map_or(Some(None), |i| i.password_file(r, base).map(Some));
    let auth_ok = auth_fits(
        r,
        f.user.as_ref(),
        f.password_env.as_ref(),
        f.password_file.as_ref(),
    );

    if !(tls_ok && auth_ok) {
        return None;
    }
    Some(ClusterSettings {
        endpoints: endpoints?,
        prefix: prefix?,
        lease_ttl: lease_ttl?,
        max_clock_skew: max_clock_skew?,
        ca_file: ca_file?,
        cert_file: cert_file?,
        key_file: key_file?,
        user: user?,
        password: from_env?.or(from_file?),
    })
}

/// How the TLS files fit together and with the endpoints; each file is
/// checked on its own by its accessor. `endpoints` is `None` when they are
/// not all valid, and then nothing is concluded from them.
pub(super) fn tls_fits(
    r: &mut Report,
    [ca, cert, key]: [Option<&Item>; 3],
    endpoints: Option<&[String]>,
) -> bool {
    let mut ok = true;
    match (cert, key) {
        (Some(cert), None) => {
            r.error(
                cert.key_at,
                "cert_file is set but key_file is not; a client certificate needs its private key",
            );
            ok = false;
        }
        (None, Some(key)) => {
            r.error(
                key.key_at,
                "key_file is set but cert_file is not; a private key needs its client certificate",
            );
            ok = false;
        }
        _ => {}
    }
    let all_http = endpoints.is_some_and(|e| e.iter().all(|url| url.starts_with("http://")));
    let first_file = [ca, cert, key]
        .into_iter()
        .flatten()
        .map(|i| i.key_at)
        .min();
    if let Some(at) = first_file.filter(|_| all_http) {
        r.error(
            at,
            "TLS files are set but every etcd endpoint is http://; use https:// endpoints \
             or remove ca_file, cert_file and key_file",
        );
        ok = false;
    }
    ok
}

/// etcd authenticates a user with a password: both or neither, and the
/// password from exactly one source.
pub(super) fn auth_fits(
    r: &mut Report,
    user: Option<&Item>,
    from_env: Option<&Item>,
    from_file: Option<&Item>,
) -> bool {
    let mut ok = true;
    if let (Some(env), Some(file)) = (from_env, from_file) {
        r.error(
            env.key_at.max(file.key_at),
            "both password_env and password_file are set; keep one of them",
        );
        ok = false;
    }
    match user {
        None => {
            for source in [from_env, from_file].into_iter().flatten() {
                r.error(
                    source.key_at,
                    format!(
                        "{} is set but user is not; add the etcd user name, e.g. user = \"bgsched\"",
                        source.label
                    ),
                );
                ok = false;
            }
        }
        Some(user) if from_env.is_none() && from_file.is_none() => {
            r.error(
                user.key_at,
                "user is set without a password; add password_env = \"NAME\" (an environment \
                 variable holding it) or password_file = \"/path/to/file\"",
            );
            ok = false;
        }
        Some(_) => {}
    }
    ok
}

pub(super) const CREDENTIALS_IN_ENDPOINT: &str =
    "an etcd endpoint must not contain a user name or \
     password; set user and password_env or password_file instead";

/// An etcd endpoint in the form the client takes, `scheme://host:port`, or
/// the message saying why it is not one, with the closest URL that is.
pub(super) fn endpoint(written: &str) -> Result<String, String> {
    // Every other message quotes the endpoint, and with it the password.
    if written.contains('@') {
        return Err(CREDENTIALS_IN_ENDPOINT.to_string());
    }
    let trimmed = written.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, trimmed),
    };
    let known_scheme = scheme.filter(|s| matches!(*s, "http" | "https"));
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (host, port) = split_host_port(authority);
    let port_number = port
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0);
    let unbracketed_v6 = !host.starts_with('[') && host.contains(':');
    let why = if trimmed.len() != written.len() {
        " (without spaces)"
    } else if scheme.is_some() && known_scheme.is_none() {
        " (only http:// and https:// are supported)"
    } else if unbracketed_v6 {
        " (an IPv6 address goes in brackets)"
    } else if !is_host(host) {
        " (with a host name or IP address)"
    } else if port.is_none() {
        " (with a port)"
    } else if port_number.is_none() {
        " (the port must be a number from 1 to 65535)"
    } else if !matches!(path, "" | "/") {
        " (without a path)"
    } else if let (Some(scheme), Some(port)) = (known_scheme, port_number) {
        return Ok(format!("{scheme}://{host}:{port}"));
    } else {
        // Only the scheme is missing; the example shows it.
        ""
    };
    let example = if unbracketed_v6 {
        "http://[fd00::5]:2379".to_string()
    } else if is_host(host) {
        format!(
            "{}://{host}:{}",
            known_scheme.unwrap_or("http"),
            port_number.unwrap_or(ETCD_CLIENT_PORT)
        )
    } else {
        EXAMPLE_ENDPOINT.to_string()
    };
    Err(format!(
        "etcd endpoint {} must be a URL like {}{why}",
        quoted(written),
        quoted(&example)
    ))
}

/// `host:port` or `[v6]:port`; the port is `None` when there is no `:`.
/// Junk after `]` is left in the host, which then fails [`is_host`].
pub(super) fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(close) = authority.find(']').filter(|_| authority.starts_with('[')) {
        let (host, after) = authority.split_at(close + 1);
        if after.is_empty() {
            return (host, None);
        }
        if let Some(port) = after.strip_prefix(':') {
            return (host, Some(port));
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

pub(super) fn is_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        }
    }
}

/// A name `std::env::var` can look up, in the portable shape. Anything else
/// in `password_env` is likely the password itself, and is not echoed.
pub(super) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Opens a file the way its user will, refusing a directory (which Linux
/// opens fine), so that "cannot be read" is said now and not at use.
pub(super) fn open_readable(path: &Path) -> Result<File, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    match file.metadata() {
        Ok(m) if m.is_dir() => Err("it is a directory".to_string()),
        Ok(_) => Ok(file),
        Err(e) => Err(e.to_string()),
    }
}
