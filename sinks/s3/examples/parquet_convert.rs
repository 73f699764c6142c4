//! Convert a file of JSON lines to one Parquet file with the S3 sink's Parquet encoder: the
//! conversion alone, for `scripts/bench-parquet.sh` to set beside pyarrow and DuckDB.
//!
//!   cargo run --release -p spillway-sink-s3 --example parquet_convert -- IN.json OUT.parquet \
//!     'ts:timestamp,method:string,status:int' [snappy|gzip|zstd|none] [row_group_mib]

use std::io::BufRead;

use spillway_sink_s3::parquet::ParquetConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, columns, rest @ ..] = args.as_slice() else {
        return Err("usage: parquet_convert IN OUT 'name:type,…' [compression] [row_group_mib]".into());
    };
    let columns: Vec<serde_json::Value> = columns
        .split(',')
        .map(|column| {
            let (name, type_name) = column.split_once(':').unwrap_or((column, "string"));
            serde_json::json!({ "name": name, "type": type_name })
        })
        .collect();
    let config: ParquetConfig = serde_json::from_value(serde_json::json!({
        "schema": { "columns": columns },
        "compression": rest.first().map_or("snappy", String::as_str),
        "row_group_mib": rest.get(1).map_or(Ok(32), |mib| mib.parse::<u64>())?,
    }))?;
    let factory = config.encoder_factory()?;
    let mut encoder = spillway_sink_api::EncoderFactory::new_encoder(&factory, 1 << 20);
    let (mut rows, mut refused) = (0u64, 0u64);
    for line in std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(input)?).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match encoder.push(&line, b"") {
            Ok(()) => rows += 1,
            Err(spillway_sink_api::EncodeError::Rejected { .. }) => refused += 1,
            Err(error) => return Err(error.into()),
        }
    }
    let payload = encoder.finish()?;
    std::fs::write(output, payload.to_bytes())?;
    eprintln!("{rows} rows, {refused} refused, {} bytes", payload.len());
    Ok(())
}
