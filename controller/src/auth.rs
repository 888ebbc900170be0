//! Who is calling and what they may do.
//!
//! Callers are named by their client certificate (verified by TLS against
//! the fleet CA): agent certificates carry an agent id and groups, admin
//! certificates carry roles. Roles: `admin` may do everything; `viewer`
//! may read; `publisher` may read and register or withdraw packages in the
//! namespaces that name it (checked by [`crate::service::catalog`]).
//! Every admin call is written to the audit log with its outcome, refused
//! ones included.

use shoal_proto::identity::{Identity, parse_identity};
use tonic::{Request, Status};

use crate::state::{AuditEntry, State};

/// What an admin call does, for authorisation and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateToken,
    ListAgents,
    RevokeAgent,
    QueryAudit,
    ApplyPolicy,
    GetPolicy,
    Backup,
    RegisterPackage,
    WithdrawPackage,
    SearchCatalog,
    SetNamespace,
    ListNamespaces,
    Assign,
    RolloutStatus,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::CreateToken => "token.create",
            Action::ListAgents => "agents.list",
            Action::RevokeAgent => "agents.revoke",
            Action::QueryAudit => "audit.query",
            Action::ApplyPolicy => "policy.apply",
            Action::GetPolicy => "policy.get",
            Action::Backup => "backup",
            Action::RegisterPackage => "package.register",
            Action::WithdrawPackage => "package.withdraw",
            Action::SearchCatalog => "catalog.search",
            Action::SetNamespace => "namespace.set",
            Action::ListNamespaces => "namespace.list",
            Action::Assign => "rollout.assign",
            Action::RolloutStatus => "rollout.status",
        }
    }

    /// Reads only: open to viewers and publishers too.
    fn read_only(self) -> bool {
        matches!(
            self,
            Action::ListAgents
                | Action::GetPolicy
                | Action::SearchCatalog
                | Action::ListNamespaces
                | Action::RolloutStatus
        )
    }

    /// Package calls: open to publishers, who are then held to the
    /// namespaces that list them.
    fn publishing(self) -> bool {
        matches!(self, Action::RegisterPackage | Action::WithdrawPackage)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
}

impl Caller {
    /// The caller of `req`, from its verified client certificate.
    pub fn of<T>(req: &Request<T>) -> Result<Self, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate from the fleet CA is required")
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
        let identity = parse_identity(leaf)
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
        Ok(Self { identity })
    }

    pub fn name(&self) -> &str {
        &self.identity.agent_id
    }

    pub fn role(&self) -> String {
        self.identity.roles.join(",")
    }

    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    fn has_role(&self, role: &str) -> bool {
        self.identity.roles.iter().any(|r| r == role)
    }

    pub fn may(&self, action: Action) -> bool {
        self.has_role("admin")
            || (action.read_only() && (self.has_role("viewer") || self.has_role("publisher")))
            || (action.publishing() && self.has_role("publisher"))
    }
}

/// Authorises an admin call and, whatever happens, audits it. `run` does
/// the work once the caller is allowed.
pub async fn audited<R, T, F, Fut>(
    shared: &crate::service::Shared,
    req: &Request<R>,
    action: Action,
    target: String,
    run: F,
) -> Result<T, Status>
where
    F: FnOnce(Caller) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let span = tracing::info_span!(
        "admin.call",
        action = action.name(),
        actor = tracing::field::Empty,
        outcome = tracing::field::Empty
    );
    tracing::Instrument::instrument(
        audited_impl(shared, req, action, target, run, &span),
        span.clone(),
    )
    .await
}

async fn audited_impl<R, T, F, Fut>(
    shared: &crate::service::Shared,
    req: &Request<R>,
    action: Action,
    target: String,
    run: F,
    span: &tracing::Span,
) -> Result<T, Status>
where
    F: FnOnce(Caller) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let state = &shared.state;
    let started = std::time::Instant::now();
    let caller = Caller::of(req)?;
    span.record("actor", caller.name());
    let mut entry = AuditEntry {
        at_ms: crate::now_ms(),
        actor: caller.name().to_owned(),
        role: caller.role(),
        action: action.name().to_owned(),
        target,
        allowed: caller.may(action),
        outcome: String::new(),
    };
    if !entry.allowed {
        entry.outcome = "denied".into();
        record(state, &entry).await?;
        shared
            .metrics
            .admin_call(action.name(), "denied", started.elapsed());
        let roles = if entry.role.is_empty() {
            "none"
        } else {
            &entry.role
        };
        return Err(Status::permission_denied(format!(
            "{} (roles: {roles}) may not {}",
            caller.name(),
            action.name()
        )));
    }
    let out = run(caller).await;
    entry.outcome = match &out {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    record(state, &entry).await?;
    let outcome = if out.is_ok() { "ok" } else { "error" };
    span.record("outcome", outcome);
    shared
        .metrics
        .admin_call(action.name(), outcome, started.elapsed());
    out
}

async fn record(state: &State, entry: &AuditEntry) -> Result<(), Status> {
    state.audit(entry).await.map_err(|e| {
        tracing::error!("audit log write failed: {e}");
        Status::unavailable(format!("the audit log cannot be written: {e}"))
    })
}
