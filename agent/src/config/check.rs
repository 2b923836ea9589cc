//! Checks every section shares: a field's value in range, present, an address prefix; each
//! error names the field.

use std::time::Duration;

use super::{raw::BoolOrText, ConfigError};
use crate::vocab::Cidr;

pub(super) fn field_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn seconds(
    field: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Duration, ConfigError> {
    if !range.contains(&value) {
        return Err(field_error(
            field,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// A `true`/`false`/`auto` field: `None` means auto (also when absent).
pub(super) fn auto_bool(
    field: &str,
    value: Option<BoolOrText>,
) -> Result<Option<bool>, ConfigError> {
    match value {
        None => Ok(None),
        Some(BoolOrText::Bool(b)) => Ok(Some(b)),
        Some(BoolOrText::Text(t)) if t == "auto" => Ok(None),
        Some(BoolOrText::Text(other)) => Err(field_error(
            field,
            format!("{other:?} is not one of auto, true, false"),
        )),
    }
}

pub(super) fn optional(field: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    value.map(|v| non_empty(field, &v)).transpose()
}

pub(super) fn non_empty(field: &str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    Ok(value.to_owned())
}

pub(super) fn cidrs(field: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<Cidr>()
                .map_err(|e| field_error(format!("{field}[{i}]"), format!("{text:?}: {e}")))
        })
        .collect()
}
