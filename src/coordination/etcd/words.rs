//! etcd's errors said in words: the endpoint and the cause, not a debug dump.

use super::*;

pub(super) fn etcd_err(context: &str) -> impl FnOnce(etcd_client::Error) -> CoordError + '_ {
    move |e| CoordError::Etcd(format!("{context}: {}", in_words(&e)))
}

/// An etcd client error as a sentence: the cause (connection refused,
/// timed out, name not resolved, ...) rather than tonic's nested Debug
/// dump, which goes to the debug log for whoever needs it.
pub fn in_words(e: &etcd_client::Error) -> String {
    tracing::debug!("etcd error in detail: {e:?}");
    let mut status = None;
    let mut texts = Vec::new();
    // etcd_client's Error has no source(): start from what it wraps.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(words) = io_in_words(io) {
                return words.to_string();
            }
        }
        if let Some(s) = err.downcast_ref::<tonic::Status>() {
            status.get_or_insert(s);
        } else {
            texts.push(err.to_string());
        }
        cause = err.source();
    }
    // Causes without an io::Error: a name lookup (its error is a
    // message), a connect timeout (tower's Elapsed), or an error status
    // from etcd itself.
    let all = texts.join(" ").to_lowercase();
    if all.contains("failed to lookup address") || all.contains("dns error") {
        return "name not resolved".into();
    }
    if all.contains("timed out") || all.contains("deadline has elapsed") {
        return "timed out connecting".into();
    }
    match status {
        Some(s) if s.code() == tonic::Code::DeadlineExceeded => {
            "timed out waiting for an answer".into()
        }
        Some(s) if s.message().is_empty() => s.code().description().to_lowercase(),
        Some(s) => format!(
            "{} ({})",
            s.message(),
            s.code().description().to_lowercase()
        ),
        None if texts.is_empty() => e.to_string(),
        None => texts.join(": "),
    }
}

pub(super) fn io_in_words(io: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind::*;
    Some(match io.kind() {
        ConnectionRefused => "connection refused",
        TimedOut => "timed out connecting",
        HostUnreachable | NetworkUnreachable => "no route to host",
        ConnectionReset => "connection reset",
        ConnectionAborted => "connection aborted",
        BrokenPipe | UnexpectedEof => "connection closed",
        AddrNotAvailable => "address not available",
        _ => return None,
    })
}

/// etcd's answer when it refuses the user, the password, or a request
/// without them (auth enabled, no user configured): in words, not as a
/// connection problem, since no retry can fix it.
pub(super) fn auth_failure(cfg: &EtcdConfig, e: &etcd_client::Error) -> Option<CoordError> {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    let message = status.message().trim_start_matches("etcdserver: ");
    let refused = matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) && [
        "authentication failed",
        "user name is empty",
        "permission denied",
        "invalid auth token",
    ]
    .iter()
    .any(|m| message.contains(m));
    let cause = match (&cfg.cluster.user, message) {
        (None, m) if m.contains("user name is empty") => {
            "etcd requires authentication; set user and password_env or password_file in [cluster]"
                .to_string()
        }
        (_, m) => m.trim_start_matches("authentication failed, ").to_string(),
    };
    refused.then(|| CoordError::Auth {
        endpoints: cfg.cluster.endpoints.join(","),
        user: cfg.cluster.user.clone(),
        cause,
    })
}

#[cfg(test)]
mod words_tests {
    use super::in_words;
    use std::io::{Error, ErrorKind};

    #[test]
    fn io_causes_are_said_in_words() {
        for (kind, words) in [
            (ErrorKind::ConnectionRefused, "connection refused"),
            (ErrorKind::TimedOut, "timed out connecting"),
            (ErrorKind::HostUnreachable, "no route to host"),
            (ErrorKind::NetworkUnreachable, "no route to host"),
        ] {
            let e = etcd_client::Error::IoError(Error::new(kind, "os detail"));
            assert_eq!(in_words(&e), words);
        }
        let lookup = etcd_client::Error::IoError(Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        assert_eq!(in_words(&lookup), "name not resolved");
        let status =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert_eq!(
            in_words(&status),
            "etcdserver: no leader (the service is currently unavailable)"
        );
    }
}
