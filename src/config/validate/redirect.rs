//! `[routes.action.redirect]`: the target URL and the status of a redirect route.

use super::missing;
use crate::config::parse::RawAction;
use crate::config::{ActionKind, Redirect};
use crate::diag::Diagnostic;

pub(super) fn redirect(
    action: &RawAction,
    kind: Option<ActionKind>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Redirect> {
    match (&action.redirect, kind) {
        (None, Some(ActionKind::Redirect)) if !action.rejected.contains("redirect") => {
            diags.push(
                Diagnostic::error(
                    "E029",
                    action.span,
                    "a redirect route needs `[routes.action.redirect]` with `to`",
                )
                .label("no redirect target")
                .help("add `redirect = { to = \"https://{host}{path}\", status = 301 }`"),
            );
            None
        }
        (Some(r), Some(ActionKind::Forward | ActionKind::Block)) => {
            diags.push(
                Diagnostic::error(
                    "E030",
                    r.span,
                    "`[routes.action.redirect]` on a route whose type is not `redirect`",
                )
                .label("ignored section")
                .help("set `type = \"redirect\"` or remove the section"),
            );
            None
        }
        (None, _) | (Some(_), None) => None,
        (Some(r), Some(ActionKind::Redirect)) => {
            let to = match &r.to {
                Some(to) if !to.value.trim().is_empty() => Some(to.value.clone()),
                Some(to) => {
                    diags.push(
                        Diagnostic::error("E005", to.span, "redirect `to` is empty")
                            .label("nothing to redirect to")
                            .help("set `to = \"https://{host}{path}\"`"),
                    );
                    None
                }
                None if r.rejected.contains("to") => None,
                None => {
                    diags.push(missing(
                        r.span,
                        "redirect `to`",
                        "add `to = \"https://{host}{path}\"`",
                    ));
                    None
                }
            };
            let status = match &r.status {
                None => Some(301),
                Some(s) if matches!(s.value, 301 | 302 | 303 | 307 | 308) => {
                    u16::try_from(s.value).ok()
                }
                Some(s) => {
                    diags.push(
                        Diagnostic::error(
                            "E029",
                            s.span,
                            format!("redirect status `{}` is not a redirect", s.value),
                        )
                        .label("not 301, 302, 303, 307 or 308")
                        .help("use 301 (permanent) or 302/307 (temporary)"),
                    );
                    None
                }
            };
            Some(Redirect {
                to: to?,
                status: status?,
            })
        }
    }
}
