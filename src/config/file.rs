//! TODO
use super::Config;
/// An error located in a configuration file: `file:line:column: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError { pub file: String, pub line: usize, pub column: usize, pub message: String }
/// Parses a whole configuration; any error means no services at all.
pub fn parse_config(text: &str, origin: &str) -> Result<Config, Vec<ConfigError>> { let _ = (text, origin); todo!() }
pub fn load_config(path: &std::path::Path) -> Result<Config, Vec<ConfigError>> { let _ = path; todo!() }
