//! Self-checks of the etcd test harness (tests/common/etcd.rs): the real etcd
//! starts, serves the v3 HTTP/JSON gateway, keeps its data across stop, kill
//! and restart, and a 3-member cluster survives losing a member.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::etcd::{kv_get, kv_put, Etcd, EtcdCluster};

fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
}

#[test]
fn single_member_lifecycle() {
    let t = Instant::now();
    let mut etcd = Etcd::start();
    eprintln!("start: {:?}", t.elapsed());
    assert!(etcd.healthy(), "{}", etcd.log_text());
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));

    // Odd lengths exercise base64 padding both ways.
    etcd.put("/bgsched/test/k", "välue-1");
    assert_eq!(etcd.get("/bgsched/test/k").as_deref(), Some("välue-1"));
    assert_eq!(etcd.get("/bgsched/test/absent"), None);

    etcd.stop();
    assert!(
        refused(etcd.client_port()),
        "client port still open after stop"
    );
    assert!(kv_get(&etcd.endpoint(), "/bgsched/test/k").is_err());

    let t = Instant::now();
    etcd.restart();
    eprintln!("restart after stop: {:?}", t.elapsed());
    assert_eq!(etcd.get("/bgsched/test/k").as_deref(), Some("välue-1"));
    etcd.put("/bgsched/test/k", "v2");

    etcd.kill();
    assert!(
        refused(etcd.client_port()),
        "client port still open after kill"
    );
    let t = Instant::now();
    etcd.restart();
    eprintln!("restart after kill: {:?}", t.elapsed());
    assert_eq!(etcd.get("/bgsched/test/k").as_deref(), Some("v2"));

    // Paused: the kernel still accepts, but nothing answers.
    etcd.pause();
    let mut s = TcpStream::connect(("127.0.0.1", etcd.client_port())).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let err = s.read(&mut [0; 64]).expect_err("a paused etcd answered");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    etcd.resume();
    etcd.wait_healthy();
}

#[test]
fn three_member_cluster_survives_losing_one() {
    let t = Instant::now();
    let mut cluster = EtcdCluster::start(3);
    eprintln!("cluster start: {:?}", t.elapsed());
    let eps = cluster.endpoints();
    assert_eq!(eps.len(), 3);
    kv_put(&eps[0], "/bgsched/test/c", "one").unwrap();

    cluster.kill_member(0);
    assert!(refused(cluster.members()[0].client_port()));
    // Two of three are a quorum: once they have a leader (a new one, if
    // member 0 led), writes through another member commit.
    common::wait_until(common::PATIENCE, "a leader among members 1 and 2", || {
        matches!(cluster.leader(), Some(1 | 2))
    });
    kv_put(&eps[1], "/bgsched/test/c", "two").unwrap();
    assert_eq!(
        kv_get(&eps[2], "/bgsched/test/c").unwrap().as_deref(),
        Some("two")
    );

    let t = Instant::now();
    cluster.restart_member(0);
    eprintln!("member restart: {:?}", t.elapsed());
    // Serializable reads would be local; range is linearizable by default,
    // so this is the cluster's latest value seen through the rejoined member.
    assert_eq!(
        kv_get(&eps[0], "/bgsched/test/c").unwrap().as_deref(),
        Some("two")
    );
}
