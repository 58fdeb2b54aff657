//! Edits of the kubeconfig talosctl writes: its one context is renamed to the org.

use serde_json::Value;

/// Why a kubeconfig could not be edited. Never quotes the file (it holds a client key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    /// Not YAML, or not a kubeconfig map.
    #[error("the kubeconfig is not valid YAML")]
    NotYaml,
    /// No context to rename.
    #[error("the kubeconfig has no context")]
    NoContext,
    /// Writing the edited YAML failed.
    #[error("the edited kubeconfig could not be serialized")]
    Serialize,
}

/// `yaml` with its current context (or its only context) named `name`, and `current-context`
/// pointing at it. Other contexts, clusters and users are kept as they are.
pub fn rename_context(yaml: &str, name: &str) -> Result<String, KubeconfigError> {
    let mut doc: Value = serde_saphyr::from_str(yaml).map_err(|_| KubeconfigError::NotYaml)?;
    let map = doc.as_object_mut().ok_or(KubeconfigError::NotYaml)?;
    let current = map
        .get("current-context")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let contexts = map
        .get_mut("contexts")
        .and_then(Value::as_array_mut)
        .ok_or(KubeconfigError::NoContext)?;
    let index = match &current {
        Some(cur) => contexts
            .iter()
            .position(|c| c.get("name").and_then(Value::as_str) == Some(cur.as_str())),
        None => None,
    }
    .or(if contexts.len() == 1 { Some(0) } else { None })
    .ok_or(KubeconfigError::NoContext)?;
    // Drop any other context already named `name` so the name stays unique.
    let mut kept = Vec::with_capacity(contexts.len());
    for (i, mut ctx) in contexts.drain(..).enumerate() {
        if i == index {
            let obj = ctx.as_object_mut().ok_or(KubeconfigError::NoContext)?;
            obj.insert("name".to_owned(), Value::String(name.to_owned()));
            kept.push(ctx);
        } else if ctx.get("name").and_then(Value::as_str) != Some(name) {
            kept.push(ctx);
        }
    }
    *contexts = kept;
    map.insert("current-context".to_owned(), Value::String(name.to_owned()));
    serde_saphyr::to_string(&doc).map_err(|_| KubeconfigError::Serialize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TALOS_KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
    - name: acme
      cluster:
        server: https://10.0.0.1:6443
        certificate-authority-data: QUJD
users:
    - name: admin@acme
      user:
        client-certificate-data: REVG
        client-key-data: R0hJ
contexts:
    - context:
        cluster: acme
        namespace: default
        user: admin@acme
      name: admin@acme
current-context: admin@acme
";

    #[test]
    fn renames_the_current_context() {
        let out = rename_context(TALOS_KUBECONFIG, "acme").unwrap();
        let v: Value = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(v["current-context"], "acme");
        assert_eq!(v["contexts"][0]["name"], "acme");
        assert_eq!(v["contexts"][0]["context"]["user"], "admin@acme");
        assert_eq!(v["users"][0]["user"]["client-key-data"], "R0hJ");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:6443"
        );
    }

    #[test]
    fn errors_do_not_quote_the_file() {
        let e = rename_context("client-key-data: [SECRET", "acme").unwrap_err();
        assert_eq!(e, KubeconfigError::NotYaml);
        assert!(!e.to_string().contains("SECRET"));
        assert_eq!(
            rename_context("apiVersion: v1\ncontexts: []\n", "acme").unwrap_err(),
            KubeconfigError::NoContext
        );
    }
}
