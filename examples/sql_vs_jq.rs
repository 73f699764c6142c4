//! The `sql` transform against the `jq` transform doing the same filter and projection on the
//! same records, in one run: each transform alone (no WAL, no sink), on one thread, as the
//! assembler runs them (jq record by record, SQL on micro-batches of the 4 MiB the assembler
//! reads at once). Prints records/s, MiB/s and CPU seconds per GiB of input, and checks that
//! both give the same records.
//!
//!   cargo run --release --example sql_vs_jq -- [--mib 256] [--rounds 3]

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spillway::processing::{TransformConfig, Transforms};

/// The access-log lines `spillway bench` sends (one record per line, ~280 bytes).
fn access_log_line(rng: &mut StdRng, sequence: u64) -> String {
    const PATHS: [&str; 6] =
        ["/api/v1/orders", "/api/v1/users/profile", "/static/app.js", "/health", "/api/v2/search", "/login"];
    const AGENTS: [&str; 3] = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        "curl/8.5.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    ];
    format!(
        "{{\"ts\":\"2026-11-25T17:{:02}:{:02}.{:03}Z\",\"seq\":{sequence},\"client\":\"10.{}.{}.{}\",\"method\":\"GET\",\"path\":\"{}?id={}\",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"user_agent\":\"{}\",\"request_id\":\"{:016x}\"}}",
        rng.random_range(0..60),
        rng.random_range(0..60),
        rng.random_range(0..1000),
        rng.random_range(0..256),
        rng.random_range(0..256),
        rng.random_range(0..256),
        PATHS[rng.random_range(0..PATHS.len())],
        rng.random_range(0..100_000),
        [200, 200, 200, 201, 304, 404, 500][rng.random_range(0..7)],
        rng.random_range(100..90_000),
        rng.random_range(0.1..900.0),
        AGENTS[rng.random_range(0..AGENTS.len())],
        rng.random::<u64>(),
    )
}

fn cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
    let seconds = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

fn transforms(yaml: &str) -> Transforms {
    let config: TransformConfig = serde_yaml_ng::from_str(yaml).expect("transform yaml");
    Transforms::build(&[config]).unwrap_or_else(|problems| panic!("{problems:?}"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut mib, mut rounds) = (256usize, 3usize);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|value| value.parse().ok()).expect("a number after the option");
        match arg.as_str() {
            "--mib" => mib = value,
            "--rounds" => rounds = value,
            other => panic!("unknown option {other}"),
        }
    }
    let mut rng = StdRng::seed_from_u64(7);
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    while total < mib << 20 {
        let line = access_log_line(&mut rng, records.len() as u64).into_bytes();
        total += line.len();
        records.push(line);
    }
    // Micro-batches as the assembler forms them: the records of each 4 MiB read.
    let mut batches: Vec<Vec<&[u8]>> = vec![Vec::new()];
    let mut batch_bytes = 0;
    for record in &records {
        if batch_bytes >= 4 << 20 {
            batches.push(Vec::new());
            batch_bytes = 0;
        }
        batch_bytes += record.len();
        batches.last_mut().unwrap().push(record);
    }
    let jq = transforms(
        "{type: jq, expr: 'select(.status >= 400 or .duration_ms > 500) | {ts, path, status, duration_ms}'}",
    );
    let query = "SELECT ts, path, status, duration_ms FROM records WHERE status >= 400 OR duration_ms > 500";
    let sql_given = transforms(&format!(
        "{{type: sql, query: '{query}', schema: {{columns: [{{name: ts, type: string}}, {{name: path, type: string}}, \
         {{name: status, type: int}}, {{name: duration_ms, type: double}}]}}}}"
    ));
    let sql_inferred = transforms(&format!("{{type: sql, query: '{query}'}}"));
    let gib = total as f64 / (1u64 << 30) as f64;
    println!(
        "{} records, {:.1} MiB ({} bytes/record), {} micro-batches of ~4 MiB; filter keeps status >= 400 or duration_ms > 500",
        records.len(),
        total as f64 / (1 << 20) as f64,
        total / records.len(),
        batches.len()
    );
    let mut outputs: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    for round in 0..rounds {
        for (name, stage) in [("jq", &jq), ("sql, given columns", &sql_given), ("sql, inferred types", &sql_inferred)] {
            let (started, cpu) = (Instant::now(), cpu_seconds());
            let mut out = Vec::new();
            if name == "jq" {
                let mut scratch = Vec::new();
                for record in &records {
                    if stage.apply(record, &mut scratch).is_ok() {
                        out.append(&mut scratch);
                    }
                }
            } else {
                for batch in &batches {
                    for outcome in stage.apply_batch(batch).into_iter().flatten() {
                        out.extend(outcome);
                    }
                }
            }
            let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
            println!(
                "round {round} {name:<20} {:>10.0} records/s {:>7.1} MiB/s {:>6.2} CPU-s/GiB   {} records out",
                records.len() as f64 / seconds,
                total as f64 / (1 << 20) as f64 / seconds,
                cpu / gib,
                out.len()
            );
            if round == 0 {
                outputs.push((name, out));
            }
        }
    }
    // The same records out: equal JSON values (numbers compared as numbers).
    let parse = |data: &Vec<u8>| serde_json::from_slice::<serde_json::Value>(data).expect("JSON output");
    let reference: Vec<serde_json::Value> = outputs[0].1.iter().map(parse).collect();
    for (name, out) in &outputs[1..] {
        let values: Vec<serde_json::Value> = out.iter().map(parse).collect();
        assert_eq!(values.len(), reference.len(), "{name}: as many records as jq");
        // Inferred types read `ts` as a timestamp and write it back in RFC 3339 form, which
        // drops a zero fraction (`…:07.000Z` → `…:07Z`): compare the instants there.
        let same = |a: &serde_json::Value, b: &serde_json::Value| {
            let instant = |value: &serde_json::Value| {
                value["ts"].as_str().and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
            };
            let (mut a, mut b) = (a.clone(), b.clone());
            let instants_equal = instant(&a) == instant(&b);
            a["ts"] = serde_json::Value::Null;
            b["ts"] = serde_json::Value::Null;
            a == b && instants_equal
        };
        let rewritten = values.iter().zip(&reference).filter(|(a, b)| a != b).count();
        let differing = values.iter().zip(&reference).filter(|(a, b)| !same(a, b)).count();
        assert_eq!(differing, 0, "{name}: the same records as jq");
        println!("{name}: the same records as jq ({rewritten} with `ts` written in another RFC 3339 form)");
    }
}
