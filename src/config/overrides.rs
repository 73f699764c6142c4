//! Command-line settings that win over the file (`spillway run --listen`, `--data-dir`). Applied
//! to every read of the file, at start and at each reload, so a reload never sees the file's own
//! `server.listen` or `data_dir` as a change.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Config;

#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `server.listen`.
    pub listen: Option<SocketAddr>,
    /// Replaces `data_dir`.
    pub data_dir: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(data_dir) = &self.data_dir {
            config.data_dir = data_dir.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_settings_replace_the_file_and_others_stay() {
        let text = "server: { listen: 127.0.0.1:9000, region: eu-west-1 }\ndata_dir: ./from-file\n";
        let mut config = super::super::parse_str(text, std::path::Path::new("t.yaml")).expect("valid");
        Overrides::default().apply(&mut config);
        assert_eq!(config.server.listen, "127.0.0.1:9000".parse().unwrap());
        let overrides = Overrides { listen: Some("0.0.0.0:4000".parse().unwrap()), data_dir: Some("/srv/x".into()) };
        overrides.apply(&mut config);
        assert_eq!(config.server.listen, "0.0.0.0:4000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/srv/x"));
        assert_eq!(config.server.region, "eu-west-1");
    }
}
