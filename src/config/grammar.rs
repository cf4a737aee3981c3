//! TODO
use super::Service;
/// A grammar error at a 1-based column of the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrammarError { pub column: usize, pub message: String }
pub fn parse_service(line: &str) -> Result<Service, GrammarError> { let _ = line; todo!() }
/// The same, from words already split (the CLI's `service add ...`).
pub fn parse_service_words(words: &[&str]) -> Result<Service, GrammarError> { let _ = words; todo!() }
