//! Routing a batch to its table: `table` may name dynamic partition keys,
//! `analytics.!{partitionKeyFromQuery:table}` or `!{partitionKeyFromLambda:db}.events`, so one
//! stream feeds several tables. The stream's `dynamic_partitioning` (jq keys, or keys a Lambda
//! transform returns) splits records into batches per key value, and each batch is appended to
//! the table its keys name (Firehose routes by a JQ expression on `otfMetadata` the same way).
//!
//! Must not: evaluate jq itself (the pipeline's partitioner does, once per record).

use spillway_sink_api::{PartitionKeySource, PartitionKeys, lambda_partition_key};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key(PartitionKeySource, String),
}

/// `table` parsed: literal text and partition keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTemplate {
    parts: Vec<Part>,
}

impl TableTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let Some(end) = rest[start..].find('}') else {
                return Err(format!("`{text}`: `!{{` without a closing `}}`"));
            };
            let expression = &rest[start + 2..start + end];
            let (source, name) = match expression.split_once(':') {
                Some(("partitionKeyFromQuery", name)) => (PartitionKeySource::Query, name),
                Some(("partitionKeyFromLambda", name)) => (PartitionKeySource::Lambda, name),
                _ => {
                    return Err(format!(
                        "`{text}`: `!{{{expression}}}` is not !{{partitionKeyFromQuery:<key>}} or !{{partitionKeyFromLambda:<key>}}"
                    ));
                }
            };
            if name.is_empty() {
                return Err(format!("`{text}`: a partition key needs a name"));
            }
            parts.push(Part::Key(source, name.to_string()));
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// The partition keys named, in order.
    pub fn keys(&self) -> Vec<(PartitionKeySource, String)> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Key(source, name) => Some((*source, name.clone())),
                Part::Literal(_) => None,
            })
            .collect()
    }

    /// The literal table name, if it names no key.
    pub fn literal(&self) -> Option<String> {
        self.keys().is_empty().then(|| self.render(&PartitionKeys::new()).unwrap_or_default())
    }

    /// The table a batch of `partition` goes to.
    pub fn render(&self, partition: &PartitionKeys) -> Result<String, String> {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => name.push_str(text),
                Part::Key(source, key) => {
                    let entry = match source {
                        PartitionKeySource::Query => key.clone(),
                        PartitionKeySource::Lambda => lambda_partition_key(key),
                    };
                    let value = partition
                        .get(&entry)
                        .ok_or_else(|| format!("the batch has no value for partition key `{key}`"))?;
                    if value.is_empty() || value.contains(['/', '\\']) || value.chars().any(char::is_control) {
                        return Err(format!("partition key `{key}` = {value:?} cannot be part of a table name"));
                    }
                    name.push_str(value);
                }
            }
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_from_partition_keys() {
        let template = TableTemplate::parse("db_!{partitionKeyFromLambda:env}.!{partitionKeyFromQuery:table}").unwrap();
        assert_eq!(
            template.keys(),
            vec![(PartitionKeySource::Lambda, "env".to_string()), (PartitionKeySource::Query, "table".to_string())]
        );
        let mut partition = PartitionKeys::new();
        partition.insert("table".into(), "clicks".into());
        partition.insert(lambda_partition_key("env"), "prod".into());
        assert_eq!(template.render(&partition), Ok("db_prod.clicks".to_string()));
        partition.insert("table".into(), "a/b".into());
        assert!(template.render(&partition).is_err());
        assert!(template.render(&PartitionKeys::new()).is_err());
        assert_eq!(TableTemplate::parse("db.events").unwrap().literal(), Some("db.events".to_string()));
        assert!(TableTemplate::parse("db.!{timestamp:yyyy}").is_err());
        assert!(TableTemplate::parse("db.!{partitionKeyFromQuery:t").is_err());
    }
}
