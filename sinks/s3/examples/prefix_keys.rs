//! Render object keys (prefix + object name) for consecutive seconds, to time the prefix
//! expression and Java pattern code against the rest of an object's delivery:
//!
//!   cargo run -p spillway-sink-s3 --example prefix_keys -- \
//!     'logs/service=!{partitionKeyFromQuery:s}/!{timestamp:yyyy/MM/dd/HH}/' Asia/Tokyo 200000

use std::collections::BTreeMap;
use std::time::Instant;

use spillway_sink_s3::key::{PrefixKind, PrefixTemplate, RenderContext, batch_time, object_name};
use spillway_sink_s3::timestamp::Zone;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, prefix, zone, count] = args.as_slice() else {
        return Err("usage: prefix_keys PREFIX ZONE COUNT".into());
    };
    let zone = Zone::named(zone)?;
    let count: i64 = count.parse()?;
    let template = PrefixTemplate::parse(Some(prefix), PrefixKind::Data)?;
    let keys: BTreeMap<String, String> = [("s".to_string(), "api".to_string())].into_iter().collect();
    let batch_id = uuid::Uuid::new_v4();
    let started = Instant::now();
    let mut bytes = 0usize;
    for second in 0..count {
        let time = batch_time(Some(1_795_626_249_123 + second * 1_000), &zone)?;
        let context =
            RenderContext { time: &time, zone: &zone, batch_id, error_output_type: None, partition_keys: &keys };
        bytes += template.render(&context)?.len() + object_name("s", 1, &time, batch_id, ".gz").len();
    }
    let elapsed = started.elapsed();
    let per_key_ns = elapsed.as_nanos() / u128::try_from(count.max(1))?;
    println!("{count} keys ({bytes} bytes) in {elapsed:?}: {per_key_ns} ns per key");
    Ok(())
}
