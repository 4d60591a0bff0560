//! `blazectl status`.

use super::Opts;
use super::output::print_json;
use crate::Client;

pub(crate) async fn run(client: &Client, opts: Opts) -> anyhow::Result<()> {
    let s = client.status().await?;
    if opts.json {
        return print_json(&serde_json::to_value(&s)?);
    }
    println!("agent          {}", s.agent);
    println!("device         {}", s.device_id);
    println!("data dir       {}", s.data_dir);
    println!("socket         {}", s.socket);
    println!("uptime         {:.1}s", s.uptime_ms as f64 / 1000.0);
    println!("databases      {}", s.databases);
    println!("connections    {}", s.connections);
    println!("subscriptions  {}", s.subscriptions);
    for u in &s.unopened {
        println!(
            "{} {}/{} seq {}: did not open {} time(s): {}",
            if u.quarantined {
                "QUARANTINED"
            } else {
                "unopened   "
            },
            u.db,
            u.origin,
            u.seq,
            u.times,
            u.reason
        );
    }
    Ok(())
}
