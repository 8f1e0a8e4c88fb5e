//! `smartproxy compile`: the rendered table on stdout or in a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{load_model, Error, Outcome, Ui, EXIT_OK};
use crate::cli::OutputFormat;
use crate::render;

pub fn run(ui: &Ui, paths: &[PathBuf], format: OutputFormat, output: Option<&Path>) -> Outcome {
    let model = load_model(ui, paths)?;
    let text = match format {
        OutputFormat::Nft => render::render_script(&model),
        OutputFormat::Json => render::json::render_json(&model),
    }
    .map_err(|e| Error::msg(e.to_string()))?;
    match output {
        None => {
            let _ = std::io::stdout().write_all(text.as_bytes());
        }
        // Replaced atomically without following a planted symlink (see `fsutil`); 0644 like
        // any generated config file: it holds no secret, and `nft -f` is often run by others.
        Some(path) => crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
            .map_err(|e| Error::msg(format!("cannot write `{}`: {e}", path.display())))?,
    }
    Ok(EXIT_OK)
}
