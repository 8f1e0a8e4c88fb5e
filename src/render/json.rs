//! Model -> nftables JSON, built from the `nftables` crate's types.

use super::RenderError;
use crate::model::Model;

/// The same ruleset as `render_script`, as an `nft -j -f` document.
pub fn render_json(model: &Model) -> Result<String, RenderError> {
    let _ = model;
    Err(RenderError::Unsupported("JSON output"))
}
