//! How to reach etcd, and the timings that follow from the lease TTL.

use super::*;
use crate::config::ClusterSettings;

pub use crate::config::{DEFAULT_LEASE_TTL, DEFAULT_MAX_CLOCK_SKEW, DEFAULT_PREFIX};

/// How to reach etcd (the `[cluster]` settings) and how much history to
/// keep; also handed to run supervisors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdConfig {
    #[serde(flatten)]
    pub cluster: ClusterSettings,
    pub history_limit: usize,
}

impl EtcdConfig {
    /// From the `[cluster]` settings; `history_limit` is `[scheduler]`'s.
    pub fn from_settings(cluster: &ClusterSettings, history_limit: usize) -> Self {
        EtcdConfig {
            cluster: cluster.clone(),
            history_limit,
        }
    }

    /// The session/run lease TTL in whole seconds, as etcd takes it.
    pub(super) fn ttl_secs(&self) -> i64 {
        self.cluster.lease_ttl.as_secs().max(1) as i64
    }

    /// Renew leases this often: three tries before the self-fencing deadline.
    pub(super) fn renew_every(&self) -> Duration {
        self.cluster.lease_ttl / 4
    }

    /// One etcd request, failovers to other members included.
    pub(super) fn request_deadline(&self) -> Duration {
        self.cluster.lease_ttl.max(Duration::from_secs(2)) / 2
    }

    /// Stop acting on a lease this long after its last confirmed renewal,
    /// which leaves a third of the TTL between giving up and expiry.
    pub(super) fn fence_after(&self) -> Duration {
        self.cluster.lease_ttl * 2 / 3
    }
}
