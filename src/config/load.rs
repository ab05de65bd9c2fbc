//! Reading and validating a config file.

use super::{Config, ConfigErrors};
use std::path::Path;

/// Read and validate the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let _ = path;
    todo!()
}

/// Validate config text; `path` is used for error locations and as the base
/// directory of relative paths.
pub fn load_str(path: &Path, text: &[u8]) -> Result<Config, ConfigErrors> {
    let _ = (path, text);
    todo!()
}
