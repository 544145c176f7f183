//! Positions and candidacies: reading the active's published position and the other
//! standbys' candidacies for the decision core, and publishing this node's own, as the active
//! (its master's position, at the configured interval) or as a standby (its candidacy, when it
//! changes). Nothing here decides who takes over: [`crate::candidacy`] does.

use super::*;
use crate::candidacy::{ActivePosition, Candidacy, PublishedView};
use crate::decide::{own_candidacy, Observation};

/// What the driver keeps about positions and candidacies between cycles.
#[derive(Default)]
pub(super) struct Publication {
    /// The active's published position as last read, its znode's mzxid, and when this agent
    /// first read that mzxid (a new mzxid is a new publication, even of the same position).
    pub(super) published: Option<(ActivePosition, i64, BootInstant)>,
    /// When the position znode was last read.
    pub(super) read_at: Option<BootInstant>,
    /// When this agent last published its master's position as the active.
    pub(super) position_sent_at: Option<BootInstant>,
    /// The candidacy last written into this agent's member znode, when, and through which
    /// session (a new session registers the member afresh, without it).
    pub(super) candidacy_sent: Option<(Candidacy, BootInstant, i64)>,
}

impl Driver {
    fn publish_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.election.position_publish_interval_ms)
    }

    /// Reads the active's published position when it may matter now (the lock is free) or once
    /// per publish interval otherwise, so a publication that stops is seen to stop. A read that
    /// fails keeps the last one: its age then tells.
    pub(super) async fn read_publications(&mut self, coord: &Coordination, lock: &LockView) {
        let now = BootInstant::now();
        let due = self.pub_state.read_at.is_none_or(|t| now.saturating_since(t) >= self.publish_interval());
        if !(due || matches!(lock, LockView::Free)) {
            return;
        }
        let sent = BootInstant::now();
        let limit = self.await_limit();
        match self.tended_during(tokio::time::timeout(limit, coord.read_position())).await {
            Ok(Ok(read)) => {
                self.acked(sent);
                self.pub_state.read_at = Some(now);
                self.pub_state.published = match (read, self.pub_state.published.take()) {
                    (None, _) => None,
                    (Some((record, mzxid)), Some((_, seen, at))) if seen == mzxid => Some((record, mzxid, at)),
                    (Some((record, mzxid)), _) => Some((record, mzxid, now)),
                };
            }
            Ok(Err(e)) => debug!("reading the published position failed: {e}"),
            Err(_) => debug!("reading the published position took too long"),
        }
    }

    /// The core's view of the published position.
    pub(super) fn published_view(&self) -> Option<PublishedView> {
        self.pub_state
            .published
            .as_ref()
            .map(|(record, _, at)| PublishedView { record: record.clone(), changed_at: *at })
    }

    /// The other members' candidacies.
    pub(super) fn candidates(&self) -> Vec<Candidacy> {
        self.mem.members.iter().filter(|m| m.node_id != self.cfg.node_id).filter_map(|m| m.candidacy.clone()).collect()
    }

    /// After a cycle acted: the active publishes its master's position every interval; any
    /// other node rewrites its candidacy when it changed (its position at most every interval).
    pub(super) async fn publish(&mut self, obs: &Observation, coord: Option<&Coordination>) {
        let Some(coord) = coord else { return };
        let SessionView::Connected { session_id } = obs.session else { return };
        let now = BootInstant::now();
        let interval = self.publish_interval();
        if let LockView::Ours { token, version } = obs.lock {
            // As observed this cycle: a promote answer may carry no position; the next health
            // check's state read does.
            let master = obs.master;
            let position = master.filter(|m| m.state == HaState::Active && m.token == token).and_then(|m| m.position);
            let due = self.pub_state.position_sent_at.is_none_or(|t| now.saturating_since(t) >= interval);
            if let (Some(position), true) = (position, due) {
                let record = ActivePosition {
                    node_id: self.cfg.node_id.clone(),
                    zone: self.cfg.election.zone.clone(),
                    position,
                    token,
                };
                let sent = BootInstant::now();
                let limit = self.await_limit();
                match self.tended_during(tokio::time::timeout(limit, coord.publish_position(&record, version))).await {
                    Ok(Ok(())) => {
                        self.acked(sent);
                        self.pub_state.position_sent_at = Some(now);
                    }
                    Ok(Err(e)) => warn!("publishing the position failed: {e}"),
                    Err(_) => warn!("publishing the position took too long"),
                }
            }
        }
        // The holder's candidacy says ineligible, so a standby never waits on it.
        let mine = own_candidacy(obs, &self.cfg.policy());
        let changed = match &self.pub_state.candidacy_sent {
            None => true,
            Some((_, _, session)) if *session != session_id => true,
            Some((last, at, _)) => {
                let same_but_position = Candidacy { position: last.position, ..mine.clone() } == *last;
                !same_but_position || (last.position != mine.position && now.saturating_since(*at) >= interval)
            }
        };
        if !changed {
            return;
        }
        let member = Member { candidacy: Some(mine.clone()), ..self.member() };
        let sent = BootInstant::now();
        let limit = self.await_limit();
        match self.tended_during(tokio::time::timeout(limit, coord.publish_member(&member))).await {
            Ok(Ok(())) => {
                self.acked(sent);
                self.pub_state.candidacy_sent = Some((mine, now, session_id));
            }
            Ok(Err(e)) => debug!("publishing the candidacy failed: {e}"),
            Err(_) => debug!("publishing the candidacy took too long"),
        }
    }
}
