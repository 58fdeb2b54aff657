//! Label sets (`tier=gpu,region=eu`) and the flag syntax of the placement orchestrator:
//! `--pool NAME:CAPACITY[:SELECTOR]` and `--org NAME[:LABELS]`.

use guildnet_core::names::{validate_dns_label, OrgName};
use std::collections::BTreeMap;
use std::fmt;

/// Why a flag value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct ParseError {
    /// Which flag (`--pool`, `--org`, `labels`).
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// Why.
    pub reason: String,
}

fn err(what: &'static str, value: &str, reason: impl Into<String>) -> ParseError {
    ParseError {
        what,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A set of `key=value` labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Parses `k=v,k2=v2` (empty: no labels). Keys and values are DNS-1123 labels.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut map = BTreeMap::new();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| err("labels", s, format!("{pair:?} is not key=value")))?;
            validate_dns_label("label key", k).map_err(|e| err("labels", s, e.to_string()))?;
            validate_dns_label("label value", v).map_err(|e| err("labels", s, e.to_string()))?;
            if map.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(err("labels", s, format!("key {k:?} appears twice")));
            }
        }
        Ok(Self(map))
    }

    /// True when every label of `selector` is in `self` with the same value (an empty selector
    /// matches everything).
    pub fn satisfies(&self, selector: &Labels) -> bool {
        selector.0.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// `--pool NAME:CAPACITY[:SELECTOR]`: a pool of capacity slots that takes the tasks of orgs
/// whose labels satisfy the selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Pool name (DNS-1123 label).
    pub name: String,
    /// Most tasks running in the pool at once (>= 1).
    pub capacity: usize,
    /// Labels an org must have to use the pool.
    pub selector: Labels,
}

impl std::str::FromStr for PoolSpec {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        validate_dns_label("pool name", name).map_err(|e| err("--pool", s, e.to_string()))?;
        let capacity = parts
            .next()
            .ok_or_else(|| err("--pool", s, "expected NAME:CAPACITY[:SELECTOR]"))?;
        let capacity: usize = capacity
            .parse()
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| err("--pool", s, "capacity must be a whole number >= 1"))?;
        let selector = Labels::parse(parts.next().unwrap_or_default())?;
        Ok(Self {
            name: name.to_owned(),
            capacity,
            selector,
        })
    }
}

/// `--org NAME[:LABELS]`: an org to register, with the labels placement matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSpec {
    /// The org.
    pub name: OrgName,
    /// Its labels.
    pub labels: Labels,
}

impl std::str::FromStr for OrgSpec {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, labels) = s.split_once(':').unwrap_or((s, ""));
        let name = OrgName::new(name).map_err(|e| err("--org", s, e.to_string()))?;
        Ok(Self {
            name,
            labels: Labels::parse(labels)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_match() {
        let org = Labels::parse("tier=gpu,region=eu").unwrap();
        assert!(org.satisfies(&Labels::parse("tier=gpu").unwrap()));
        assert!(org.satisfies(&Labels::default()));
        assert!(!org.satisfies(&Labels::parse("tier=cpu").unwrap()));
        assert!(!Labels::default().satisfies(&Labels::parse("tier=gpu").unwrap()));
        assert_eq!(org.to_string(), "region=eu,tier=gpu");
        assert!(Labels::parse("tier").is_err());
        assert!(Labels::parse("Tier=gpu").is_err());
        assert!(Labels::parse("a=1,a=2").is_err());
    }

    #[test]
    fn pool_and_org_flags() {
        let p: PoolSpec = "gpu:2:tier=gpu".parse().unwrap();
        assert_eq!((p.name.as_str(), p.capacity), ("gpu", 2));
        assert_eq!(p.selector, Labels::parse("tier=gpu").unwrap());
        let p: PoolSpec = "any:1".parse().unwrap();
        assert!(p.selector.is_empty());
        assert!("gpu".parse::<PoolSpec>().is_err());
        assert!("gpu:0".parse::<PoolSpec>().is_err());
        assert!("GPU:1".parse::<PoolSpec>().is_err());
        let o: OrgSpec = "acme:tier=gpu".parse().unwrap();
        assert_eq!(o.name.as_str(), "acme");
        assert!("acme".parse::<OrgSpec>().unwrap().labels.is_empty());
        let e = "Acme".parse::<OrgSpec>().unwrap_err();
        assert_eq!(e.what, "--org");
    }
}
