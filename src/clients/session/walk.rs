//! Walks over every client matching a query, one page of the API at a time: what
//! `clients::each` reads, so that a job over tens of thousands of clients holds one
//! page in memory, and the run record shows how far it got.

use std::collections::{HashSet, VecDeque};

use serde::Serialize;

use super::{MAX_PAGES, SearchQuery, Session, SessionError};
use crate::clients::paging::Pager;
use crate::clients::{Client, ListQuery};

/// Where a walk is: the list requests still to make, and the page walk of the current
/// one.
#[derive(Debug, Clone)]
pub struct ClientWalk {
    query: SearchQuery,
    requests: VecDeque<ListQuery>,
    pager: Option<Pager>,
    /// The ids already yielded, kept only when several requests may return the same
    /// client (`any_tag` with several tags).
    seen: Option<HashSet<String>>,
    yielded: usize,
}

/// How far the `clients::each` walks of a run got, for the run record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// List requests made by walks.
    pub pages: u64,
    /// Clients the walks handed to the script.
    pub clients_seen: u64,
    /// Clients the run changed (or, in plan mode, would change), walks or not.
    pub changed: u64,
}

impl Session {
    /// A walk over the clients matching `query`, up to its `limit`. Nothing is fetched
    /// until [`Session::next_page`] asks.
    pub fn walk(&self, query: SearchQuery) -> ClientWalk {
        let requests: VecDeque<ListQuery> = query.list_requests().into();
        let seen = (requests.len() > 1).then(HashSet::new);
        ClientWalk {
            query,
            requests,
            pager: None,
            seen,
            yielded: 0,
        }
    }

    /// The next page of matching clients, after the post-filter (so possibly empty), or
    /// `None` when the walk has ended. Each call makes at most one list request.
    pub fn next_page(&self, walk: &mut ClientWalk) -> Result<Option<Vec<Client>>, SessionError> {
        let result = self.next_page_inner(walk);
        self.remember_error(result)
    }

    fn next_page_inner(&self, walk: &mut ClientWalk) -> Result<Option<Vec<Client>>, SessionError> {
        loop {
            if walk.yielded >= walk.query.limit {
                return Ok(None);
            }
            let pager = match &mut walk.pager {
                Some(pager) => pager,
                None => match walk.requests.pop_front() {
                    Some(request) => walk.pager.insert(Pager::new(request, MAX_PAGES)),
                    None => return Ok(None),
                },
            };
            let Some(request) = pager.query().cloned() else {
                walk.pager = None;
                continue;
            };
            let target = format!("page {}", request.page);
            let page = self.call("each", "list", &target, |b| b.list(&request))?;
            let clients = pager.accept(page);
            let mut out = Vec::with_capacity(clients.len());
            for client in clients {
                if walk.yielded >= walk.query.limit {
                    break;
                }
                if !walk.query.matches(&client) {
                    continue;
                }
                if let Some(seen) = &mut walk.seen
                    && !seen.insert(client.id.clone())
                {
                    continue;
                }
                self.remember(&client);
                walk.yielded += 1;
                out.push(client);
            }
            let mut state = self.state();
            state.pages += 1;
            state.seen += out.len() as u64;
            return Ok(Some(out));
        }
    }

    /// How far this run's walks got, and how many clients it changed.
    pub fn progress(&self) -> Progress {
        let state = self.state();
        Progress {
            pages: state.pages,
            clients_seen: state.seen,
            changed: state.changed.len() as u64,
        }
    }
}
