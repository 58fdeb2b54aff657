//! YAML rendering of manifests (multi-document where needed).

use serde::Serialize;

/// One object as a YAML document.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, crate::Error> {
    // Go through serde_json first: Kubernetes types serialize Option::None as absent there.
    let v = serde_json::to_value(value).map_err(|e| crate::Error::Serialize {
        what: "manifest",
        reason: e.to_string(),
    })?;
    serde_saphyr::to_string(&v).map_err(|e| crate::Error::Serialize {
        what: "manifest",
        reason: e.to_string(),
    })
}

/// Several objects as one multi-document YAML stream (`---` separated).
pub fn to_multi_yaml(values: &[serde_json::Value]) -> Result<String, crate::Error> {
    let mut out = String::new();
    for v in values {
        out.push_str("---\n");
        out.push_str(&to_yaml(v)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
