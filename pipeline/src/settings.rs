//! Layered configuration: embedded defaults → optional TOML file (`--config`) → environment
//! (`VIGIL__SECTION__KEY`, e.g. `VIGIL__DETECTOR__MAX_BATCH=16`) → command-line overrides
//! (e.g. `--bootstrap`), deserialized once into typed sections and validated.
//!
//! Unknown keys are rejected (every section is `deny_unknown_fields`), and every error names
//! the offending key. `vigil config` prints the effective result as TOML.

use std::collections::HashMap;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::api::ApiConfig;
use crate::detector::DetectorConfig;
use crate::kafka::KafkaConfig;
use crate::model::ModelConfig;
use crate::producer::ProducerConfig;
use crate::sink::SinkConfig;
use crate::telemetry::TelemetryConfig;

/// Environment variable prefix; `__` separates sections and keys.
pub const ENV_PREFIX: &str = "VIGIL";
/// Separator between prefix, sections and keys in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Every section of the configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Brokers, topics, librdkafka passthrough.
    pub kafka: KafkaConfig,
    /// `vigil produce`.
    pub producer: ProducerConfig,
    /// `vigil detect`.
    pub detector: DetectorConfig,
    /// `vigil sink`.
    pub sink: SinkConfig,
    /// Model weights and post-processing.
    pub model: ModelConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// `vigil serve`.
    pub api: ApiConfig,
}

/// Configuration could not be loaded or is invalid. Always names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Reading or deserializing failed (missing file, TOML syntax, unknown key, wrong type).
    #[error("configuration error: {0}")]
    Load(config::ConfigError),
    /// A value is out of range or inconsistent with another.
    #[error("configuration error: `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// The effective configuration could not be rendered as TOML.
    #[error("cannot render the configuration as TOML: {0}")]
    Render(toml::ser::Error),
}

// Not `#[from]`/`#[source]`: the message already includes the cause, and error chains
// (`{:#}`) would print it twice.
impl From<config::ConfigError> for SettingsError {
    fn from(e: config::ConfigError) -> Self {
        SettingsError::Load(e)
    }
}

impl From<toml::ser::Error> for SettingsError {
    fn from(e: toml::ser::Error) -> Self {
        SettingsError::Render(e)
    }
}

/// Builds [`Settings`] from the layers; see the module docs for the order.
#[derive(Debug, Default, Clone)]
pub struct SettingsLoader {
    file: Option<PathBuf>,
    env: Option<HashMap<String, String>>,
    overrides: Vec<(String, String)>,
}

impl SettingsLoader {
    /// Adds a TOML file layer (must exist).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Uses these variables instead of the process environment (tests).
    pub fn env(mut self, vars: HashMap<String, String>) -> Self {
        self.env = Some(vars);
        self
    }

    /// Overrides one key (dotted path, e.g. `kafka.bootstrap_servers`); highest precedence.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// Reads every layer, deserializes and validates.
    pub fn load(self) -> Result<Settings, SettingsError> {
        let mut builder = Config::builder().add_source(Config::try_from(&Settings::default())?);
        if let Some(path) = &self.file {
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml).required(true));
        }
        let mut env = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(true);
        if let Some(vars) = self.env {
            env = env.source(Some(vars.into_iter().collect()));
        }
        builder = builder.add_source(env);
        for (key, value) in self.overrides {
            builder = builder.set_override(key, value)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }
}

impl Settings {
    /// A loader with no file, the process environment and no overrides.
    pub fn loader() -> SettingsLoader {
        SettingsLoader::default()
    }

    /// Checks every section; the error names the first offending key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key: String, reason: String| SettingsError::Invalid { key, reason };
        self.kafka.validate().map_err(|(k, r)| invalid(k, r))?;
        self.producer.validate().map_err(|(k, r)| invalid(k.into(), r))?;
        self.detector.validate().map_err(|(k, r)| invalid(k.into(), r))?;
        self.sink.validate().map_err(|(k, r)| invalid(k.into(), r))?;
        self.telemetry.validate().map_err(|(k, r)| invalid(k.into(), r))?;
        self.api.validate().map_err(|(k, r)| invalid(k.into(), r))?;
        let model = &self.model;
        if !(0.0..=1.0).contains(&model.score_threshold) {
            return Err(invalid("model.score_threshold".into(), format!("{} is outside 0..=1", model.score_threshold)));
        }
        if !(0.0..=1.0).contains(&model.nms_iou) {
            return Err(invalid("model.nms_iou".into(), format!("{} is outside 0..=1", model.nms_iou)));
        }
        let record_limit = self.detector.max_record_bytes as u64;
        if record_limit > u64::from(self.kafka.max_message_bytes) {
            return Err(invalid(
                "detector.max_record_bytes".into(),
                format!(
                    "{record_limit} exceeds kafka.max_message_bytes ({}): oversized records could not reach the dead-letter topic",
                    self.kafka.max_message_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `vigil config` prints). Loading it back as
    /// a file gives the same settings.
    pub fn to_toml(&self) -> Result<String, SettingsError> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::detector::Delivery;
    use crate::model::Backend;

    /// The Kubernetes configuration (`ops/vigil.toml`) loads through the real loader.
    #[test]
    fn the_kubernetes_config_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/vigil.toml");
        let settings = no_env().file(&path).load().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(settings.telemetry.http_addr.as_deref(), Some("0.0.0.0:9464"));
    }

    #[test]
    fn an_http_addr_must_be_host_and_port() {
        let err = no_env().set("telemetry.http_addr", "localhost").load().unwrap_err().to_string();
        assert!(err.contains("telemetry.http_addr") && err.contains("HOST:PORT"), "{err}");
    }

    fn no_env() -> SettingsLoader {
        Settings::loader().env(HashMap::new())
    }

    fn env(pairs: &[(&str, &str)]) -> SettingsLoader {
        Settings::loader().env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn toml_file(text: &str) -> tempfile_lite::TempToml {
        tempfile_lite::TempToml::new(text)
    }

    /// A tiny self-deleting temp file (the crate has no tempfile dependency).
    mod tempfile_lite {
        use super::*;
        pub(super) struct TempToml(pub PathBuf);
        impl TempToml {
            pub(super) fn new(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!("vigil-settings-{}.toml", uuid::Uuid::new_v4()));
                std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
                Self(path)
            }
        }
        impl Drop for TempToml {
            fn drop(&mut self) {
                std::fs::remove_file(&self.0).ok();
            }
        }
    }

    fn err_text(loader: SettingsLoader) -> String {
        loader.load().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = no_env().load().unwrap();
        assert_eq!(s.kafka.topics.images.name, "images");
        assert_eq!(s.kafka.topics.images.partitions, 12);
        assert_eq!(s.kafka.topics.dlq.name, "images.dlq");
        assert_eq!(s.detector.group_id, "vigil-detector");
        assert_eq!(s.detector.delivery, Delivery::ExactlyOnce);
        assert_eq!(s.detector.max_batch, 8);
        assert_eq!(s.detector.max_record_bytes, 20 * 1024 * 1024);
        assert_eq!(s.detector.instance_id, None);
        assert_eq!(s.sink.database_url, "sqlite://vigil.sqlite");
        assert_eq!(s.sink.group_id, "vigil-sink");
        assert!(s.kafka.client.is_empty());
    }

    #[test]
    fn file_then_env_then_override() {
        let file = toml_file(
            "[kafka]\nbootstrap_servers = \"file:1\"\n[detector]\nmax_batch = 4\ndelivery = \"at-least-once\"\nbackend = \"cpu\"\ninstance_id = \"pod-0\"\n[sink]\nmax_batch = 7\n",
        );
        let s = env(&[("VIGIL__DETECTOR__MAX_BATCH", "16"), ("VIGIL__KAFKA__BOOTSTRAP_SERVERS", "env:2")])
            .file(&file.0)
            .set("kafka.bootstrap_servers", "flag:3")
            .load()
            .unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "flag:3");
        assert_eq!(s.detector.max_batch, 16);
        assert_eq!(s.detector.delivery, Delivery::AtLeastOnce);
        assert_eq!(s.detector.backend, Backend::Cpu);
        assert_eq!(s.detector.instance_id.as_deref(), Some("pod-0"));
        assert_eq!(s.sink.max_batch, 7);
        assert_eq!(s.sink.group_id, "vigil-sink", "untouched keys keep their defaults");
    }

    #[test]
    fn numeric_env_value_for_string_key() {
        let s = env(&[("VIGIL__DETECTOR__INSTANCE_ID", "7")]).load().unwrap();
        assert_eq!(s.detector.instance_id.as_deref(), Some("7"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let file = toml_file("[detector]\nmax_batchh = 4\n");
        let msg = err_text(no_env().file(&file.0));
        assert!(msg.contains("max_batchh") && msg.contains("detector"), "{msg}");

        let msg = err_text(env(&[("VIGIL__SINK__NOPE", "1")]));
        assert!(msg.contains("nope") && msg.contains("sink"), "{msg}");

        let file = toml_file("[nosuchsection]\nx = 1\n");
        assert!(err_text(no_env().file(&file.0)).contains("nosuchsection"));
    }

    #[test]
    fn invalid_values_are_rejected_with_their_key() {
        let msg = err_text(env(&[("VIGIL__DETECTOR__MAX_BATCH", "lots")]));
        assert!(msg.contains("detector.max_batch"), "{msg}");
        let msg = err_text(env(&[("VIGIL__DETECTOR__MAX_BATCH", "0")]));
        assert!(msg.contains("detector.max_batch"), "{msg}");
        let msg = err_text(env(&[("VIGIL__DETECTOR__DELIVERY", "twice")]));
        assert!(msg.contains("delivery") || msg.contains("Delivery"), "{msg}");
        let msg = err_text(env(&[("VIGIL__KAFKA__TOPICS__IMAGES__PARTITIONS", "0")]));
        assert!(msg.contains("kafka.topics.images.partitions"), "{msg}");
        let msg = err_text(env(&[("VIGIL__SINK__DATABASE_URL", "mysql://x")]));
        assert!(msg.contains("sink.database_url"), "{msg}");
        let msg = err_text(no_env().file("/nonexistent/vigil.toml"));
        assert!(msg.contains("/nonexistent/vigil.toml"), "{msg}");
    }

    #[test]
    fn client_passthrough_accepts_dotted_quoted_and_env_forms() {
        let file = toml_file(
            "[kafka.client]\nsasl.mechanisms = \"PLAIN\"\n\"socket.keepalive.enable\" = true\n\"linger.ms\" = 7\n",
        );
        let s = env(&[("VIGIL__KAFKA__CLIENT__CLIENT__ID", "vigil-test")]).file(&file.0).load().unwrap();
        assert_eq!(s.kafka.client.get("sasl.mechanisms").map(String::as_str), Some("PLAIN"));
        assert_eq!(s.kafka.client.get("socket.keepalive.enable").map(String::as_str), Some("true"));
        assert_eq!(s.kafka.client.get("linger.ms").map(String::as_str), Some("7"));
        assert_eq!(s.kafka.client.get("client.id").map(String::as_str), Some("vigil-test"));
    }

    #[test]
    fn unknown_client_property_is_rejected_by_name() {
        let msg = err_text(env(&[("VIGIL__KAFKA__CLIENT__SASL_MECHANISMS", "PLAIN")]));
        assert!(msg.contains("kafka.client.sasl_mechanisms"), "{msg}");
        let msg = err_text(env(&[("VIGIL__KAFKA__CLIENT__BOOTSTRAP__SERVERS", "x:1")]));
        assert!(msg.contains("kafka.bootstrap_servers"), "{msg}");
    }

    #[test]
    fn printed_config_loads_back_identically() {
        let s = env(&[("VIGIL__KAFKA__CLIENT__CLIENT__ID", "x"), ("VIGIL__DETECTOR__INSTANCE_ID", "pod-1")])
            .load()
            .unwrap();
        let text = s.to_toml().unwrap();
        let file = toml_file(&text);
        let again = no_env().file(&file.0).load().unwrap();
        assert_eq!(again.to_toml().unwrap(), text);
    }
}
