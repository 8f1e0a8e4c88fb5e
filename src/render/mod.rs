//! Model -> nftables: the text script through the minijinja templates in `templates/`
//! ([`script`], with the route views in [`views`]), and the same ruleset as nftables JSON
//! ([`json`]); the numbers and words both write alike are in [`values`].
//!
//! Pure: no clock, no environment, no hash order. Large scripts are rendered on several
//! threads; the text does not depend on how many. The only user text that reaches the
//! output is the comment, sanitised by [`crate::nft::comment::sanitize`]; names were validated to
//! `[a-z][a-z0-9_-]` and are always behind a prefix, so they cannot be keywords. Every
//! object name comes from [`crate::nft::names`].

pub mod json;
mod script;
mod values;
mod views;

pub use script::render_script;
pub(crate) use script::template_texts;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}
