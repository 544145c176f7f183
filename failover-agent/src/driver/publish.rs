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
    /// The active's published position as last read, its znode's mzxid, when this agent first
    /// read that mzxid (a new mzxid is a new publication, even of the same position), and
    /// whether it is known to be a renewal (see [`PublishedView::renewed`]).
    pub(super) published: Option<Seen>,
    /// When the position znode was last read.
    pub(super) read_at: Option<BootInstant>,
    /// When this agent last published its master's position as the active.
    pub(super) position_sent_at: Option<BootInstant>,
    /// The candidacy last written into this agent's member znode, when, and through which
    /// session (a new session registers the member afresh, without it).
    pub(super) candidacy_sent: Option<(Candidacy, BootInstant, i64)>,
}

/// The active's publication as this agent has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    record: ActivePosition,
    /// Its znode's mzxid.
    mzxid: i64,
    /// When this agent first read this mzxid.
    changed_at: BootInstant,
    /// Whether this agent has seen a publication appear or change since it started.
    renewed: bool,
}

/// What is known of the publication after a read answered `read` (record and mzxid, or none)
/// at `now`. A publication read at this agent's first read may be of any age, so it is not
/// known renewed until its mzxid changes; one that appears or changes after a read is new.
///
/// A publication that vanishes (agents never delete it: the coordinator lost its data, or
/// someone removed the znode) is kept as it was last seen, ageing: the positions the masters
/// reached did not go back with it, and forgetting it would switch the lag gate off, letting a
/// standby far behind take over without an operator's `--allow-data-loss`. Once older than
/// `election.position_max_age_ms` it holds every standby but its own publisher back, as after
/// a restart of the whole cluster, until a new active publishes.
fn seen_next(
    previous: Option<Seen>,
    read: Option<(ActivePosition, i64)>,
    first_read: bool,
    now: BootInstant,
) -> Option<Seen> {
    let Some((record, mzxid)) = read else { return previous };
    match previous {
        Some(p) if p.mzxid == mzxid => Some(Seen { record, ..p }),
        _ => Some(Seen { record, mzxid, changed_at: now, renewed: !first_read }),
    }
}

/// The core's view of a publication, seen by node `own`. A record this node published itself
/// is as good as renewed: whatever the active acknowledged after it, this node's master took
/// (it was that active), so its age says nothing of what this node lacks. After a restart of
/// the whole cluster nobody publishes until a node is active again, and the last active is the
/// one node the gate can still let through.
fn view(seen: &Seen, own: &str) -> PublishedView {
    PublishedView {
        record: seen.record.clone(),
        changed_at: seen.changed_at,
        renewed: seen.renewed || seen.record.node_id == own,
    }
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
                let first_read = self.pub_state.read_at.is_none();
                self.pub_state.read_at = Some(now);
                self.pub_state.published = seen_next(self.pub_state.published.take(), read, first_read, now);
            }
            Ok(Err(e)) => debug!("reading the published position failed: {e}"),
            Err(_) => debug!("reading the published position took too long"),
        }
    }

    /// The core's view of the published position.
    pub(super) fn published_view(&self) -> Option<PublishedView> {
        self.pub_state.published.as_ref().map(|s| view(s, &self.cfg.node_id))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: u64) -> ActivePosition {
        ActivePosition {
            node_id: "a".into(),
            zone: None,
            position: crate::candidacy::Position(position),
            token: FencingToken(5),
        }
    }

    /// A restarted agent does not take the publication it first reads for a fresh one: only a
    /// change proves the active still publishes. One that appears after a read found none is
    /// new.
    #[test]
    fn a_publication_is_renewed_only_once_seen_to_change_or_appear() {
        let t0 = BootInstant::now();
        let later = t0 + Duration::from_millis(1000);
        let first = seen_next(None, Some((record(10), 7)), true, t0).unwrap();
        assert_eq!((first.changed_at, first.renewed), (t0, false), "first read: of unknown age");
        let same = seen_next(Some(first.clone()), Some((record(10), 7)), false, later).unwrap();
        assert_eq!((same.changed_at, same.renewed), (t0, false), "read again unchanged: still unknown");
        let changed = seen_next(Some(same), Some((record(10), 8)), false, later).unwrap();
        assert_eq!((changed.changed_at, changed.renewed), (later, true), "a new mzxid is a renewal");
        assert_eq!(seen_next(Some(changed.clone()), None, false, later), Some(changed), "gone: kept as last seen");
        let appeared = seen_next(None, Some((record(11), 9)), false, later).unwrap();
        assert!(appeared.renewed, "published after a read that found none: new");
    }

    /// After a restart of the whole cluster, the record read first is of unknown age to every
    /// node but the one that published it, which was the active and has what it published.
    /// The coordinator loses its data: the publication vanishes, and a standby far behind it
    /// is still held back by the lag gate (it was let through before).
    #[test]
    fn a_vanished_publication_keeps_the_lag_gate_closed_to_a_standby_far_behind() {
        use crate::candidacy::{gate, Blocker, CandidacyPolicy, OwnCandidacy, Position};
        let t0 = BootInstant::now();
        let policy = CandidacyPolicy { max_lag: Some(100), ..CandidacyPolicy::default() };
        let own = OwnCandidacy { position: Some(Position(20_000)), ..OwnCandidacy::default() };
        let seen = seen_next(None, Some((record(50_000), 7)), false, t0);
        let gone = seen_next(seen, None, false, t0 + Duration::from_millis(10));
        let published = gone.as_ref().map(|s| view(s, "c"));
        let blocked = gate(&own, published.as_ref(), &policy, t0 + Duration::from_millis(10), false, false);
        assert_eq!(blocked, Some(Blocker::Lagging { behind: 30_000, max_lag: 100 }));
        // An operator's override still gets through.
        assert_eq!(gate(&own, published.as_ref(), &policy, t0, false, true), None);
    }

    #[test]
    fn a_record_this_node_published_is_taken_as_renewed() {
        let first = seen_next(None, Some((record(10), 7)), true, BootInstant::now()).unwrap();
        assert!(!view(&first, "b").renewed, "another node's record read once: unknown age");
        assert!(view(&first, "a").renewed, "its publisher's own");
    }
}
