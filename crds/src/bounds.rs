//! Bounds on everything a tenant or a provider writes into a DeCloud resource, enforced by the
//! API server at apply time: string lengths, list and map sizes, quantity syntax and magnitude.
//! A Workload is never the lever that makes the API server (or the operator) do unbounded work.
//!
//! The kube-apiserver evaluates `x-kubernetes-validations` rules even on a value that already
//! failed `pattern` or `maxLength`, so every CEL rule that parses a quantity first checks the
//! bounded pattern itself and never hands an unbounded string to `quantity()`.

use schemars::Schema;
use serde_json::{Value, json};

/// Expands to the quantity pattern as a literal, so the CEL rules can embed it with `concat!`.
macro_rules! quantity_pattern {
    () => {
        r"^([0-9]{1,15}([.][0-9]{0,9})?|[.][0-9]{1,9})([KMGTPE]i|[numkMGTPE]|[eE][+]?[0-9]{1,2})?$"
    };
}

/// A Kubernetes resource quantity without sign, bounded: at most 15 integer and 9 fraction
/// digits, a decimal exponent of at most 2 digits ("100m", "0.5", "128Mi", "1e3").
pub const QUANTITY_PATTERN: &str = quantity_pattern!();

/// Longest quantity string accepted (the pattern allows 29 characters).
pub const QUANTITY_MAX_LENGTH: u32 = 32;

/// Largest CPU quantity accepted anywhere: 1024 cores.
pub const MAX_CPU: &str = "1024";
/// [`MAX_CPU`] in millicores.
pub const MAX_CPU_MILLIS: i64 = 1024 * 1000;
/// Largest memory quantity accepted anywhere: 64 TiB.
pub const MAX_MEMORY: &str = "64Ti";
/// [`MAX_MEMORY`] in bytes.
pub const MAX_MEMORY_BYTES: i64 = 64 << 40;
/// Largest ephemeral-storage quantity a provider may offer: 1 PiB.
pub const MAX_STORAGE: &str = "1Pi";
/// [`MAX_STORAGE`] in bytes.
pub const MAX_STORAGE_BYTES: i64 = 1 << 50;

/// Label (and annotation) keys: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters, as `metav1` validates them.
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// Longest label key: a 253-character prefix, `/`, a 63-character name.
pub const LABEL_KEY_MAX_LENGTH: u32 = 317;
/// Label values: empty, or at most 63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// Longest label value.
pub const LABEL_VALUE_MAX_LENGTH: u32 = 63;
/// Most labels on a template or in a selector.
pub const MAX_LABELS: u32 = 64;
/// Most annotations on a template.
pub const MAX_ANNOTATIONS: u32 = 32;
/// Longest annotation value: with [`MAX_ANNOTATIONS`] the whole set stays below the 256 KiB
/// Kubernetes allows on one object, so copying it onto a Pod cannot fail.
pub const ANNOTATION_VALUE_MAX_LENGTH: u32 = 4096;

/// Longest object name (a DNS subdomain).
pub const NAME_MAX_LENGTH: u32 = 253;
/// Most environment variables per container.
pub const MAX_ENV: u32 = 128;
/// Longest environment variable value.
pub const ENV_VALUE_MAX_LENGTH: u32 = 32 * 1024;
/// Most bytes of environment values per container.
pub const ENV_TOTAL_MAX_LENGTH: u32 = 256 * 1024;
/// Longest single `command`/`args` item.
pub const ARG_MAX_LENGTH: u32 = 32 * 1024;
/// Most bytes in one `command` or `args` list.
pub const ARGS_TOTAL_MAX_LENGTH: u32 = 64 * 1024;
/// Most conditions in a status.
pub const MAX_CONDITIONS: u32 = 16;

/// Sets `key` on a schema object.
fn set(schema: &mut Schema, key: &str, value: Value) {
    schema.insert(key.to_string(), value);
}

/// Appends CEL rules to a schema's `x-kubernetes-validations`.
fn add_rules(schema: &mut Schema, rules: impl IntoIterator<Item = Value>) {
    let list = schema
        .ensure_object()
        .entry("x-kubernetes-validations")
        .or_insert_with(|| json!([]));
    if let Value::Array(list) = list {
        list.extend(rules);
    }
}

/// The CEL rule "at most `max`", guarded so that `quantity()` only ever sees a string that
/// matches the bounded pattern (the pattern's own error names the field otherwise).
fn at_most(max: &str, message: &str) -> Value {
    json!({
        "rule": format!(
            "!self.matches('{}') || quantity(self).compareTo(quantity('{max}')) <= 0",
            quantity_pattern!()
        ),
        "message": message,
    })
}

fn quantity_syntax(schema: &mut Schema) {
    set(schema, "maxLength", json!(QUANTITY_MAX_LENGTH));
    set(schema, "pattern", json!(QUANTITY_PATTERN));
}

/// A CPU quantity of at most [`MAX_CPU`] cores.
pub(crate) fn cpu_quantity(schema: &mut Schema) {
    quantity_syntax(schema);
    add_rules(schema, [at_most(MAX_CPU, "must be at most 1024 (cores)")]);
}

/// A memory quantity of at most [`MAX_MEMORY`].
pub(crate) fn memory_quantity(schema: &mut Schema) {
    quantity_syntax(schema);
    add_rules(schema, [at_most(MAX_MEMORY, "must be at most 64Ti")]);
}

/// An ephemeral-storage quantity of at most [`MAX_STORAGE`].
pub(crate) fn storage_quantity(schema: &mut Schema) {
    quantity_syntax(schema);
    add_rules(schema, [at_most(MAX_STORAGE, "must be at most 1Pi")]);
}

/// Smallest persistent volume claim: ext4 needs room for its journal and metadata.
pub const MIN_VOLUME: &str = "16Mi";
/// Largest persistent volume claim (the provider's storage offer caps it further).
pub const MAX_VOLUME: &str = "16Ti";

/// A persistent volume's size: at least [`MIN_VOLUME`], at most [`MAX_VOLUME`].
pub(crate) fn volume_quantity(schema: &mut Schema) {
    quantity_syntax(schema);
    add_rules(
        schema,
        [
            at_most(MAX_VOLUME, "must be at most 16Ti"),
            json!({
                "rule": format!(
                    "!self.matches('{}') || quantity(self).compareTo(quantity('{MIN_VOLUME}')) >= 0",
                    quantity_pattern!()
                ),
                "message": "must be at least 16Mi (the volume's filesystem needs room)",
            }),
        ],
    );
}

/// Valid label keys, as a CEL condition on `k`.
fn label_key_rule(k: &str) -> String {
    format!(
        "{k}.size() <= {LABEL_KEY_MAX_LENGTH} && {k}.matches('{LABEL_KEY_PATTERN}') && (!{k}.contains('/') || {k}.indexOf('/') <= {NAME_MAX_LENGTH})"
    )
}

/// A map of labels: at most [`MAX_LABELS`], keys and values as Kubernetes validates them.
pub(crate) fn label_map(schema: &mut Schema) {
    set(schema, "maxProperties", json!(MAX_LABELS));
    set(
        schema,
        "additionalProperties",
        json!({
            "type": "string",
            "maxLength": LABEL_VALUE_MAX_LENGTH,
            "pattern": LABEL_VALUE_PATTERN,
        }),
    );
    add_rules(
        schema,
        [json!({
            "rule": format!("self.all(k, {})", label_key_rule("k")),
            "message": "label keys must be an optional DNS subdomain prefix (at most 253 characters) and '/', then a name of at most 63 alphanumerics, '-', '_' or '.'",
        })],
    );
}

/// A map of annotations: at most [`MAX_ANNOTATIONS`], keys as labels', bounded values.
pub(crate) fn annotation_map(schema: &mut Schema) {
    set(schema, "maxProperties", json!(MAX_ANNOTATIONS));
    set(
        schema,
        "additionalProperties",
        json!({"type": "string", "maxLength": ANNOTATION_VALUE_MAX_LENGTH}),
    );
    add_rules(
        schema,
        [json!({
            "rule": format!("self.all(k, {})", label_key_rule("k")),
            "message": "annotation keys must be an optional DNS subdomain prefix (at most 253 characters) and '/', then a name of at most 63 alphanumerics, '-', '_' or '.'",
        })],
    );
}

/// Items of a `command`/`args` list: each at most [`ARG_MAX_LENGTH`], all together at most
/// [`ARGS_TOTAL_MAX_LENGTH`] (the item count is set on the field).
pub(crate) fn arg_list(schema: &mut Schema) {
    set(
        schema,
        "items",
        json!({"type": "string", "maxLength": ARG_MAX_LENGTH}),
    );
    add_rules(
        schema,
        [json!({
            "rule": format!("self.map(a, a.size()).sum() <= {ARGS_TOTAL_MAX_LENGTH}"),
            "message": format!("must hold at most {ARGS_TOTAL_MAX_LENGTH} characters in all"),
        })],
    );
}

/// Environment variables: their values together at most [`ENV_TOTAL_MAX_LENGTH`].
pub(crate) fn env_list(schema: &mut Schema) {
    add_rules(
        schema,
        [json!({
            "rule": format!(
                "self.map(e, has(e.value) ? e.value.size() : 0).sum() <= {ENV_TOTAL_MAX_LENGTH}"
            ),
            "message": format!("values must hold at most {ENV_TOTAL_MAX_LENGTH} characters in all"),
        })],
    );
}

/// Strings of a selector's `values`: label values.
pub(crate) fn label_value_list(schema: &mut Schema) {
    set(
        schema,
        "items",
        json!({
            "type": "string",
            "maxLength": LABEL_VALUE_MAX_LENGTH,
            "pattern": LABEL_VALUE_PATTERN,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxima_agree_with_the_parser() {
        use crate::quantity::{to_millis, to_units};
        assert_eq!(to_millis(MAX_CPU), Ok(MAX_CPU_MILLIS));
        assert_eq!(to_units(MAX_MEMORY), Ok(MAX_MEMORY_BYTES));
        assert_eq!(to_units(MAX_STORAGE), Ok(MAX_STORAGE_BYTES));
    }

    /// The pattern, checked by hand (no regex crate): what it accepts, what it refuses.
    #[test]
    fn the_pattern_is_bounded() {
        assert_eq!(
            QUANTITY_PATTERN,
            r"^([0-9]{1,15}([.][0-9]{0,9})?|[.][0-9]{1,9})([KMGTPE]i|[numkMGTPE]|[eE][+]?[0-9]{1,2})?$"
        );
        // The longest string it can match fits maxLength.
        let longest = format!("{}.{}e+99", "9".repeat(15), "9".repeat(9));
        assert!(longest.len() <= QUANTITY_MAX_LENGTH as usize);
        // Whatever it accepts is parsed: at most 24 digits and an exponent below 100.
        assert!(
            crate::quantity::to_units(&longest)
                .unwrap_err()
                .is_too_large()
        );
    }

    fn matches(pattern: &str, s: &str) -> bool {
        regex::Regex::new(pattern)
            .expect("pattern compiles")
            .is_match(s)
    }

    #[test]
    fn the_pattern_accepts_what_people_write() {
        for q in [
            "100m",
            "0.5",
            ".5",
            "1.",
            "2",
            "1500m",
            "128Mi",
            "1Gi",
            "1.5Gi",
            "64Ti",
            "1e3",
            "1E+2",
            "1E",
            "250000u",
            "1n",
            "1024",
            "999999999999999",
            "0.000000001",
            "123456789012345.123456789e+99",
        ] {
            assert!(matches(QUANTITY_PATTERN, q), "{q} refused");
            assert!(q.len() <= QUANTITY_MAX_LENGTH as usize, "{q}");
        }
    }

    #[test]
    fn the_pattern_refuses_attacker_strings() {
        let long = "9".repeat(1000);
        for q in [
            "0e2147483647",
            "1e2147483647",
            "1e999",
            "1e100",
            long.as_str(),
            "9999999999999999",
            "0.0000000001",
            "1e-3",
            "-1",
            "+1",
            "1 Gi",
            "lots",
            "",
            ".",
            "1e",
            "1Ki5",
            "1KiB",
            "1.5.5",
        ] {
            assert!(!matches(QUANTITY_PATTERN, q), "{q} accepted");
        }
    }

    #[test]
    fn everything_the_pattern_accepts_parses() {
        // Every suffix with the longest digit runs: parsed (or too large), never garbage.
        for suffix in ["", "m", "n", "E", "Ei", "Ki", "e99", "E+99", "e0"] {
            for number in [
                "999999999999999",
                "999999999999999.999999999",
                ".999999999",
                "0",
            ] {
                let q = format!("{number}{suffix}");
                assert!(matches(QUANTITY_PATTERN, &q), "{q}");
                match crate::quantity::to_millis(&q) {
                    Ok(_) => {}
                    Err(e) => assert!(e.is_too_large(), "{q}: {e}"),
                }
            }
        }
    }

    #[test]
    fn label_patterns() {
        for k in [
            "app",
            "decloud.dev/workload",
            "topology.kubernetes.io/region",
            "A_b.c-9",
        ] {
            assert!(matches(LABEL_KEY_PATTERN, k), "{k}");
        }
        let long_name = "a".repeat(64);
        for k in [
            "",
            "-a",
            "a/",
            "/a",
            "Upper.Case/x",
            long_name.as_str(),
            "a b",
        ] {
            assert!(!matches(LABEL_KEY_PATTERN, k), "{k}");
        }
        for v in ["", "web", "v1.2_3-x"] {
            assert!(matches(LABEL_VALUE_PATTERN, v), "{v}");
        }
        for v in ["-a", "a-", "a b", "a/b"] {
            assert!(!matches(LABEL_VALUE_PATTERN, v), "{v}");
        }
    }
}
