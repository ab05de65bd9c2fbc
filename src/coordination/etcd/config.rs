//! How to reach etcd, and the timings that follow from the lease TTL.

use super::*;
use crate::config::ClusterSettings;

pub use crate::config::{DEFAULT_LEASE_TTL, DEFAULT_MAX_CLOCK_SKEW, DEFAULT_PREFIX};

pub(super) fn default_max_clock_skew() -> Duration {
    DEFAULT_MAX_CLOCK_SKEW
}

/// How to reach etcd; also handed to run supervisors.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease_ttl: Duration,
    /// How far this replica's clock may be off the members' median.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: Duration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub history_limit: usize,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// From the `[cluster]` settings; `history_limit` is `[scheduler]`'s.
    pub fn from_settings(cluster: &ClusterSettings, history_limit: usize) -> Self {
        EtcdConfig {
            endpoints: cluster.endpoints.clone(),
            prefix: cluster.prefix.clone(),
            lease_ttl: cluster.lease_ttl,
            max_clock_skew: cluster.max_clock_skew,
            ca_file: cluster.ca_file.clone(),
            cert_file: cluster.cert_file.clone(),
            key_file: cluster.key_file.clone(),
            user: cluster.user.clone(),
            password: cluster.password.as_ref().map(|p| p.expose().to_string()),
            history_limit,
        }
    }

    /// The session/run lease TTL in whole seconds, as etcd takes it.
    pub(super) fn ttl_secs(&self) -> i64 {
        self.lease_ttl.as_secs().max(1) as i64
    }

    /// Renew leases this often: three tries before the self-fencing deadline.
    pub(super) fn renew_every(&self) -> Duration {
        self.lease_ttl / 4
    }

    /// One etcd request, failovers to other members included.
    pub(super) fn request_deadline(&self) -> Duration {
        self.lease_ttl.max(Duration::from_secs(2)) / 2
    }

    /// Stop acting on a lease this long after its last confirmed renewal,
    /// which leaves a third of the TTL between giving up and expiry.
    pub(super) fn fence_after(&self) -> Duration {
        self.lease_ttl * 2 / 3
    }
}
