//! `[settings]`: defined once; table name, default engine, mark mask, log group.

use std::path::PathBuf;

use super::names::{table_name_ok, table_name_problem};
use super::{engine_choice, out_of_range};
use crate::config::parse::{RawFile, RawSettings};
use crate::config::Settings;
use crate::diag::{Diagnostic, FileId};

pub(super) fn settings(
    files: &[(FileId, PathBuf, RawFile)],
    diags: &mut Vec<Diagnostic>,
) -> Settings {
    let mut found: Vec<&RawSettings> = files
        .iter()
        .filter_map(|(_, _, f)| f.settings.as_ref())
        .collect();
    let Some(first) = found.first().copied() else {
        return Settings::default();
    };
    for other in found.drain(1..) {
        diags.push(
            Diagnostic::error("E006", other.span, "`[settings]` is defined more than once")
                .label("second `[settings]` here")
                .also(first.span, "first `[settings]` here")
                .help("keep `[settings]` in one file only (e.g. `00-settings.toml`)"),
        );
    }
    let mut s = Settings {
        span: Some(first.span),
        ..Settings::default()
    };
    if let Some(table) = &first.table {
        if table_name_ok(&table.value) {
            s.table.clone_from(&table.value);
        } else {
            diags.push(
                Diagnostic::error(
                    "E027",
                    table.span,
                    format!("invalid table name `{}`", table.value),
                )
                .label(table_name_problem(&table.value))
                .help("use [a-z][a-z0-9_]{0,31}, not an nft keyword (e.g. `smartproxy`)"),
            );
        }
    }
    if let Some(engine) = &first.default_engine {
        if let Some(e) = engine_choice(engine, "default engine", diags) {
            s.default_engine = e;
            s.default_engine_span = Some(engine.span);
        }
    }
    if let Some(mask) = &first.ct_mark_mask {
        match parse_mask(&mask.value) {
            Ok(m) => {
                s.ct_mark_mask = m;
                s.ct_mark_mask_span = Some(mask.span);
            }
            Err(why) => diags.push(
                Diagnostic::error("E026", mask.span, format!("invalid `ct_mark_mask`: {why}"))
                    .label("not a usable mark mask")
                    .help("give one contiguous run of bits as hex, e.g. \"0x00ff0000\""),
            ),
        }
    }
    if let Some(group) = &first.log_group {
        match u16::try_from(group.value) {
            Ok(g) => s.log_group = g,
            Err(_) => diags.push(out_of_range(group.span, "log_group", 0, 65535)),
        }
    }
    s
}

/// `0x00ff0000`, `0o…`, `0b…` or decimal, `_` allowed between digits (as in a TOML
/// integer); one contiguous run of set bits.
fn parse_mask(text: &str) -> Result<u32, &'static str> {
    let text: String = text.trim().chars().filter(|c| *c != '_').collect();
    let lower = text.to_ascii_lowercase();
    let (digits, radix) = if let Some(hex) = lower.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(oct) = lower.strip_prefix("0o") {
        (oct, 8)
    } else if let Some(bin) = lower.strip_prefix("0b") {
        (bin, 2)
    } else {
        (lower.as_str(), 10)
    };
    let value = u32::from_str_radix(digits, radix)
        .ok()
        .filter(|_| !digits.starts_with(['+', '-']))
        .ok_or("not a 32-bit hexadecimal or decimal number")?;
    if value == 0 {
        return Err("the mask is zero");
    }
    // Shifted down to bit 0, a contiguous run is 2^n - 1: adding one clears every bit.
    let shifted = value >> value.trailing_zeros();
    if shifted & shifted.wrapping_add(1) != 0 {
        return Err("the bits are not contiguous");
    }
    Ok(value)
}
