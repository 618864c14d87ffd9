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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Map, Value, json};

    use super::*;
    use crate::clients::Backend;
    use crate::clients::embedded::EmbeddedStore;
    use crate::clients::session::{KNOWN_MAX, Mode, State};

    /// A session over `n` clients; client `i` is tagged `even` or `odd`, and `third`
    /// when `i` is a multiple of 3.
    fn session(n: usize) -> Session {
        let store = EmbeddedStore::in_memory().unwrap();
        let backend = store.company("c");
        let items: Vec<Map<String, Value>> = (0..n)
            .map(|i| {
                let mut tags = vec![if i % 2 == 0 { "even" } else { "odd" }];
                if i % 3 == 0 {
                    tags.push("third");
                }
                json!({"email": format!("c{i}@example.com"), "tags": tags})
                    .as_object()
                    .cloned()
                    .unwrap()
            })
            .collect();
        backend.create_many(&items).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(backend);
        Session::new(backend, Mode::Live, 10_000, None)
    }

    fn walk_all(session: &Session, query: SearchQuery) -> Vec<String> {
        let mut walk = session.walk(query);
        let mut ids = Vec::new();
        while let Some(page) = session.next_page(&mut walk).unwrap() {
            assert!(page.len() <= 200);
            ids.extend(page.into_iter().map(|c| c.id));
        }
        ids
    }

    fn query() -> SearchQuery {
        SearchQuery {
            limit: usize::MAX,
            ..SearchQuery::default()
        }
    }

    #[test]
    fn a_walk_reads_one_page_a_call_until_the_last() {
        let s = session(450);
        let mut walk = s.walk(query());
        assert!(
            s.calls().is_empty(),
            "nothing is fetched before it is asked for"
        );
        let sizes: Vec<usize> = std::iter::from_fn(|| s.next_page(&mut walk).unwrap())
            .map(|p| p.len())
            .collect();
        assert_eq!(sizes, [200, 200, 50]);
        assert_eq!(s.calls().len(), 3);
        assert_eq!(
            s.progress(),
            Progress {
                pages: 3,
                clients_seen: 450,
                changed: 0
            }
        );
        assert!(
            s.next_page(&mut walk).unwrap().is_none(),
            "an ended walk stays ended"
        );
        assert_eq!(s.calls().len(), 3);
    }

    #[test]
    fn a_walk_stops_at_its_limit_without_another_request() {
        let s = session(450);
        let ids = walk_all(
            &s,
            SearchQuery {
                limit: 210,
                ..SearchQuery::default()
            },
        );
        assert_eq!(ids.len(), 210);
        assert_eq!(s.calls().len(), 2);
    }

    #[test]
    fn tags_filter_and_any_tag_walks_each_client_once() {
        let s = session(300);
        let even = walk_all(
            &s,
            SearchQuery {
                tags: vec!["even".into(), "third".into()],
                ..query()
            },
        );
        assert_eq!(even.len(), 50, "multiples of 6 below 300");
        let s = session(300);
        let either = walk_all(
            &s,
            SearchQuery {
                any_tags: vec!["even".into(), "third".into()],
                ..query()
            },
        );
        // 150 even, plus the 50 odd multiples of 3; the 50 that are both come once.
        assert_eq!(either.len(), 200);
        let mut unique = either.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 200);
    }

    #[test]
    fn a_run_keeps_a_bounded_number_of_clients_in_memory() {
        let mut state = State::default();
        let client = |i: usize| Client {
            id: i.to_string(),
            attributes: Map::new(),
        };
        state.planned.insert("0".into());
        for i in 0..KNOWN_MAX + 500 {
            state.keep(&client(i));
        }
        assert_eq!(state.known.len(), KNOWN_MAX);
        assert!(
            state.known.contains_key("0"),
            "a planned client is never forgotten"
        );
        assert!(
            !state.known.contains_key("1"),
            "the oldest is forgotten first"
        );
        assert!(state.known.contains_key(&(KNOWN_MAX + 499).to_string()));
        // Keeping a known client again does not grow the order.
        state.keep(&client(KNOWN_MAX + 499));
        assert_eq!(state.known.len(), KNOWN_MAX);
        assert_eq!(state.known_order.len(), KNOWN_MAX);
    }
}
