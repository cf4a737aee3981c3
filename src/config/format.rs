//! TODO
use super::Service;
pub(super) fn write_service(f: &mut std::fmt::Formatter<'_>, s: &Service) -> std::fmt::Result { let _ = (f, s); todo!() }
