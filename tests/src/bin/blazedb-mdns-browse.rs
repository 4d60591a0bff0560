//! Browses for BlazeDB agents with mDNS as a stranger on the LAN would, and
//! prints every service it resolves as one JSON line: its full name, host
//! name, addresses, port and TXT properties. The LAN tests run it in a
//! namespace of their own to check what the agents give away.
//!
//! Usage: `blazedb-mdns-browse SECONDS`.

use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent};

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let daemon = ServiceDaemon::new()?;
    let events = daemon.browse(blazed::mesh::discovery::SERVICE_TYPE)?;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut seen = std::collections::BTreeMap::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(info)) => {
                let txt: serde_json::Map<String, serde_json::Value> = info
                    .txt_properties
                    .iter()
                    .map(|p| (p.key().to_owned(), p.val_str().into()))
                    .collect();
                let addrs: Vec<String> = info
                    .addresses
                    .iter()
                    .map(|a| a.to_ip_addr().to_string())
                    .collect();
                let line = serde_json::json!({
                    "fullname": info.fullname,
                    "host": info.host,
                    "port": info.port,
                    "addrs": addrs,
                    "txt": txt,
                });
                seen.insert(info.fullname.clone(), line);
            }
            // A service renamed within the window (a new mesh secret makes a
            // new tag) says goodbye under its old name.
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                seen.remove(&fullname);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    for line in seen.values() {
        println!("{line}");
    }
    let _ = daemon.shutdown();
    Ok(())
}
