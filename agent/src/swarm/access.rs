//! Who may fetch which package from this agent, as the controller last
//! said: restricted packages name the groups allowed to fetch them, and
//! withdrawn packages are served to no one. Checked by the swarm service
//! on every manifest, availability and chunk request, so a peer outside a
//! package's groups gets nothing, whoever it asks.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use shoal_proto::identity::Identity;
use shoal_proto::{ContentId, pb};

/// Why a peer may not have a package.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("package {0} is withdrawn")]
    Withdrawn(ContentId),
    #[error("package {id} is restricted to groups {groups}; {peer} is in none of them")]
    Restricted {
        id: ContentId,
        groups: String,
        peer: String,
    },
}

#[derive(Debug, Default)]
struct Inner {
    allowed: HashMap<ContentId, Vec<String>>,
    withdrawn: HashSet<ContentId>,
}

/// The restrictions and withdrawals in force.
#[derive(Debug, Default)]
pub struct PackageAccess {
    inner: RwLock<Inner>,
}

impl PackageAccess {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the restrictions with the controller's full list.
    pub fn set_acls(&self, acls: &pb::PackageAcls) {
        let allowed = acls
            .acls
            .iter()
            .filter_map(|a| {
                let id = ContentId::from_slice(&a.content_id)?;
                (!a.allowed_groups.is_empty()).then(|| (id, a.allowed_groups.clone()))
            })
            .collect();
        self.write().allowed = allowed;
    }

    /// Restricts one package (from the controller's manifest answer),
    /// until the next full list.
    pub fn restrict(&self, id: ContentId, groups: Vec<String>) {
        if !groups.is_empty() {
            self.write().allowed.insert(id, groups);
        }
    }

    /// Replaces the withdrawn set; returns the packages newly withdrawn.
    pub fn set_withdrawn(&self, w: &pb::Withdrawals) -> Vec<ContentId> {
        let now: HashSet<ContentId> = w
            .content_ids
            .iter()
            .filter_map(|c| ContentId::from_slice(c))
            .collect();
        let mut inner = self.write();
        let new = now.difference(&inner.withdrawn).copied().collect();
        inner.withdrawn = now;
        new
    }

    pub fn is_withdrawn(&self, id: &ContentId) -> bool {
        self.read().withdrawn.contains(id)
    }

    /// May `peer` have package `id`?
    pub fn check(&self, id: &ContentId, peer: &Identity) -> Result<(), AccessError> {
        let inner = self.read();
        if inner.withdrawn.contains(id) {
            return Err(AccessError::Withdrawn(*id));
        }
        match inner.allowed.get(id) {
            Some(groups) if !groups.iter().any(|g| peer.in_group(g)) => {
                Err(AccessError::Restricted {
                    id: *id,
                    groups: groups.join(", "),
                    peer: peer.agent_id.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, groups: &[&str]) -> Identity {
        Identity {
            agent_id: id.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            roles: Vec::new(),
            serial: "01".into(),
            not_before_unix: 0,
            not_after_unix: 0,
            fingerprint: String::new(),
        }
    }

    #[test]
    fn restricted_and_withdrawn_packages() {
        let access = PackageAccess::default();
        let (open, lab, gone) = (
            ContentId::from_bytes([1; 32]),
            ContentId::from_bytes([2; 32]),
            ContentId::from_bytes([3; 32]),
        );
        access.set_acls(&pb::PackageAcls {
            acls: vec![pb::PackageAcl {
                content_id: lab.as_bytes().to_vec().into(),
                allowed_groups: vec!["lab-b".into()],
            }],
        });
        let new = access.set_withdrawn(&pb::Withdrawals {
            content_ids: vec![gone.as_bytes().to_vec().into(), vec![9u8; 3].into()],
        });
        assert_eq!(new, vec![gone]);
        let (student, lab_pc) = (peer("a-1", &["lab-a"]), peer("b-1", &["lab-b", "all"]));
        assert_eq!(access.check(&open, &student), Ok(()));
        assert!(matches!(
            access.check(&lab, &student),
            Err(AccessError::Restricted { .. })
        ));
        assert_eq!(access.check(&lab, &lab_pc), Ok(()));
        assert_eq!(
            access.check(&gone, &lab_pc),
            Err(AccessError::Withdrawn(gone))
        );
        // The same list again withdraws nothing new; an empty one lifts all.
        assert!(
            access
                .set_withdrawn(&pb::Withdrawals {
                    content_ids: vec![gone.as_bytes().to_vec().into()],
                })
                .is_empty()
        );
        access.set_acls(&pb::PackageAcls::default());
        access.set_withdrawn(&pb::Withdrawals::default());
        assert_eq!(access.check(&lab, &student), Ok(()));
        assert_eq!(access.check(&gone, &student), Ok(()));
    }
}
