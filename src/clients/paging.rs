//! Walking the pages of a list: the one loop that every reader of many clients uses, and
//! that no server answer can make endless. It follows each page's `next`, and stops on
//! the last page, on an empty page, on a `next` that does not move forward, on a page
//! that repeats the one before, and at a hard cap, with a warning for each odd stop.

use tracing::warn;

use super::{Client, ListQuery, Page};

/// Why a walk over pages ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagingStop {
    /// The server said there is no next page.
    Done,
    /// A page held no clients.
    Empty,
    /// The server named a next page that is not after the current one.
    NotAdvancing { page: u32, next: u32 },
    /// A page held exactly the clients of the page before.
    Repeated { page: u32 },
    /// The walk reached the most pages it may request.
    Cap { pages: u32 },
    /// The caller had all it wanted.
    Enough,
}

impl PagingStop {
    /// Whether the stop is a sign of a misbehaving server (or of too much data).
    pub fn is_odd(&self) -> bool {
        matches!(
            self,
            PagingStop::NotAdvancing { .. } | PagingStop::Repeated { .. } | PagingStop::Cap { .. }
        )
    }
}

/// A walk over the pages of one list query. The caller asks [`Pager::query`] for the
/// next request, sends it, and gives the answer to [`Pager::accept`].
#[derive(Debug, Clone)]
pub struct Pager {
    query: ListQuery,
    cap: u32,
    pages: u32,
    last_ids: Vec<String>,
    stop: Option<PagingStop>,
}

impl Pager {
    /// A walk from the query's page, requesting at most `cap` pages.
    pub fn new(mut query: ListQuery, cap: u32) -> Pager {
        query.page = query.page.max(1);
        Pager {
            query,
            cap: cap.max(1),
            pages: 0,
            last_ids: Vec::new(),
            stop: None,
        }
    }

    /// The request for the next page, or `None` when the walk has ended.
    pub fn query(&self) -> Option<&ListQuery> {
        match self.stop {
            Some(_) => None,
            None => Some(&self.query),
        }
    }

    /// Why the walk ended, once it has.
    pub fn stop(&self) -> Option<&PagingStop> {
        self.stop.as_ref()
    }

    /// Pages requested so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Ends the walk early: the caller has what it needs.
    pub fn finish(&mut self) {
        if self.stop.is_none() {
            self.stop = Some(PagingStop::Enough);
        }
    }

    /// Takes the answer to the last [`Pager::query`]: returns its clients (none when it
    /// repeats the page before) and moves to the next page or ends the walk.
    pub fn accept(&mut self, page: Page) -> Vec<Client> {
        self.pages += 1;
        let current = self.query.page;
        let ids: Vec<String> = page.clients.iter().map(|c| c.id.clone()).collect();
        let stop = if ids.is_empty() {
            Some(PagingStop::Empty)
        } else if ids == self.last_ids {
            Some(PagingStop::Repeated { page: current })
        } else {
            match page.next {
                None => Some(PagingStop::Done),
                Some(next) if next <= current => Some(PagingStop::NotAdvancing {
                    page: current,
                    next,
                }),
                Some(_) if self.pages >= self.cap => Some(PagingStop::Cap { pages: self.pages }),
                Some(next) => {
                    self.query.page = next;
                    None
                }
            }
        };
        let clients = match stop {
            Some(PagingStop::Repeated { .. }) => Vec::new(),
            _ => page.clients,
        };
        if let Some(stop) = stop {
            self.end(stop);
        }
        self.last_ids = ids;
        clients
    }

    fn end(&mut self, stop: PagingStop) {
        match &stop {
            PagingStop::NotAdvancing { page, next } => warn!(
                page,
                next,
                "the API named a next page that is not after this one; stopping the list here"
            ),
            PagingStop::Repeated { page } => warn!(
                page,
                "the API answered a page with the same clients as the page before; stopping the list here"
            ),
            PagingStop::Cap { pages } => warn!(
                pages,
                "the list reached the most pages one search may read; stopping the list here"
            ),
            PagingStop::Done | PagingStop::Empty | PagingStop::Enough => {}
        }
        self.stop = Some(stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn page(ids: &[u32], next: Option<u32>) -> Page {
        Page {
            clients: ids
                .iter()
                .map(|id| Client {
                    id: id.to_string(),
                    attributes: Map::new(),
                })
                .collect(),
            next,
            total: None,
        }
    }

    /// Walks canned answers, indexed by page number, and returns the ids and the stop.
    fn walk(answers: impl Fn(u32) -> Page, cap: u32) -> (Vec<String>, PagingStop, u32) {
        let mut pager = Pager::new(ListQuery::first_page(), cap);
        let mut ids = Vec::new();
        let mut guard = 0;
        while let Some(query) = pager.query() {
            guard += 1;
            assert!(guard < 1000, "the pager did not stop");
            let answer = answers(query.page);
            ids.extend(pager.accept(answer).into_iter().map(|c| c.id));
        }
        let stop = pager.stop().cloned().unwrap_or(PagingStop::Done);
        (ids, stop, pager.pages())
    }

    #[test]
    fn follows_next_to_the_last_page() {
        let (ids, stop, pages) = walk(
            |n| match n {
                1 => page(&[1, 2], Some(2)),
                2 => page(&[3, 4], Some(3)),
                _ => page(&[5], None),
            },
            100,
        );
        assert_eq!(ids, ["1", "2", "3", "4", "5"]);
        assert_eq!(stop, PagingStop::Done);
        assert_eq!(pages, 3);
    }

    #[test]
    fn stops_on_an_empty_page() {
        let (ids, stop, _) = walk(
            |n| {
                if n == 1 {
                    page(&[1], Some(2))
                } else {
                    page(&[], Some(n + 1))
                }
            },
            100,
        );
        assert_eq!(ids, ["1"]);
        assert_eq!(stop, PagingStop::Empty);
    }

    #[test]
    fn stops_when_next_does_not_advance() {
        let (ids, stop, _) = walk(|_| page(&[1, 2], Some(1)), 100);
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(stop, PagingStop::NotAdvancing { page: 1, next: 1 });
        assert!(stop.is_odd());
    }

    #[test]
    fn stops_when_a_page_repeats_the_last_one() {
        // A server that ignores the page number and always says there is more.
        let (ids, stop, pages) = walk(|n| page(&[1, 2], Some(n + 1)), 100);
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(stop, PagingStop::Repeated { page: 2 });
        assert_eq!(pages, 2);
    }

    #[test]
    fn stops_at_the_cap() {
        let (ids, stop, pages) = walk(|n| page(&[n], Some(n + 1)), 5);
        assert_eq!(ids.len(), 5);
        assert_eq!(stop, PagingStop::Cap { pages: 5 });
        assert_eq!(pages, 5);
    }

    #[test]
    fn finish_ends_the_walk() {
        let mut pager = Pager::new(ListQuery::first_page(), 10);
        pager.accept(page(&[1], Some(2)));
        pager.finish();
        assert!(pager.query().is_none());
        assert_eq!(pager.stop(), Some(&PagingStop::Enough));
        assert!(!PagingStop::Enough.is_odd());
    }
}
