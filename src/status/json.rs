//! `smartproxy status --format json`, also what serve answers on its socket.

use super::Status;

/// `serde_json` pretty form of [`Status`]; fields in declaration order, absent values `null`.
pub fn render_json(s: &Status) -> String {
    // A Status is strings, numbers and options: serialising it cannot fail.
    let mut out = serde_json::to_string_pretty(s).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::sample;

    #[test]
    fn status_json_round_trips() {
        let s = sample();
        let back: Status = serde_json::from_str(&render_json(&s)).expect("parses");
        assert_eq!(back, s);
    }
}
