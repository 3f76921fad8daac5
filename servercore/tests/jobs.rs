//! Jobs over real loopback connections: serialized `JobQueue`s, `run_on_worker`, and
//! `SessionHandle::run` on the session's worker with the session object.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! (a channel message or an observed count) with `common::TIMEOUT` as the safety net.

mod common;

use common::workers::{recv, thread_name, Nop};
use common::{any_port, connect};
use servercore::{
    Ctx, DisconnectReason, JobQueue, SendError, ServerService, Session, SessionHandle, SessionId,
    WorkerGone,
};
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

// ----- jobs ----------------------------------------------------------------------------

#[test]
fn a_job_queue_runs_jobs_one_at_a_time_in_order_per_posting_thread() {
    const THREADS: usize = 4;
    const JOBS: u32 = 2000;
    let server = ServerService::builder(any_port()).workers(2).start(|| Nop).unwrap();
    let queue = JobQueue::new(&server.service(), 1, Vec::<(usize, u32)>::new());
    let running = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let elsewhere = Arc::new(Mutex::new(BTreeSet::new()));
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (queue, running, overlaps, elsewhere, barrier) =
                (&queue, &running, &overlaps, &elsewhere, &barrier);
            s.spawn(move || {
                for n in 0..JOBS {
                    // Rounds of 50 posts, all threads at once: their posts interleave.
                    if n % 50 == 0 {
                        barrier.wait();
                    }
                    let (running, overlaps, elsewhere) =
                        (running.clone(), overlaps.clone(), elsewhere.clone());
                    queue
                        .post(move |log| {
                            if running.swap(true, Ordering::AcqRel) {
                                overlaps.fetch_add(1, Ordering::Relaxed);
                            }
                            let name = thread_name();
                            if name != "sc-server-1" {
                                elsewhere.lock().unwrap().insert(name);
                            }
                            log.push((t, n));
                            // A little work, to widen the window an overlap would show in.
                            std::hint::black_box((0..100u32).sum::<u32>());
                            running.store(false, Ordering::Release);
                        })
                        .expect("worker running");
                }
            });
        }
    });
    // Posted after every thread's last post: runs after all of them.
    let (tx, rx) = mpsc::channel();
    queue.post(move |log| tx.send(std::mem::take(log)).unwrap()).unwrap();
    let log = recv(&rx, "the log");
    assert_eq!(overlaps.load(Ordering::Relaxed), 0, "two jobs of one queue ran at once");
    assert!(elsewhere.lock().unwrap().is_empty(), "jobs ran on {:?}", elsewhere.lock().unwrap());
    assert_eq!(log.len(), THREADS * JOBS as usize);
    for t in 0..THREADS {
        let ns: Vec<u32> = log.iter().filter(|e| e.0 == t).map(|e| e.1).collect();
        assert_eq!(ns, (0..JOBS).collect::<Vec<_>>(), "thread {t}'s jobs in posting order");
    }
    // The posting threads really interleaved (otherwise the test proved little).
    let switches = log.windows(2).filter(|w| w[0].0 != w[1].0).count();
    eprintln!("{switches} switches between posting threads in the log");

    let svc = server.service();
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(queue.post(|_| {}), Err(WorkerGone), "posting after shutdown fails");
    assert!(svc.run_on_worker(0, || {}).is_err());
}

#[test]
fn run_on_worker_runs_on_that_worker() {
    let server = ServerService::builder(any_port()).workers(2).start(|| Nop).unwrap();
    let svc = server.service();
    assert_eq!(svc.workers(), 2);
    let (tx, rx) = mpsc::channel();
    for w in 0..4 {
        let tx = tx.clone();
        svc.run_on_worker(w, move || tx.send((w, thread_name())).unwrap()).unwrap();
    }
    let mut seen: Vec<(usize, String)> = (0..4).map(|_| recv(&rx, "a job")).collect();
    seen.sort();
    let want: Vec<(usize, String)> = (0..4).map(|w| (w, format!("sc-server-{}", w % 2))).collect();
    assert_eq!(seen, want, "worker index taken modulo the worker count");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

// ----- SessionHandle::run --------------------------------------------------------------

enum ObjEv {
    Connected(SessionHandle, String),
    Disconnected(SessionId, DisconnectReason),
}

/// A session object with state that jobs read and change.
struct Obj {
    value: u64,
    tx: Sender<ObjEv>,
}

impl Session for Obj {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send(ObjEv::Connected(ctx.handle(), thread_name()));
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.tx.send(ObjEv::Disconnected(ctx.id(), reason.clone()));
    }
}

#[test]
fn session_handle_run_runs_on_the_sessions_worker_with_the_object() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(2)
        .reuse_port(false)
        .start(move || Obj { value: 0, tx: tx.clone() })
        .unwrap();
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        clients.push(connect(server.local_addr()));
        match recv(&rx, "on_connected") {
            ObjEv::Connected(h, thread) => sessions.push((h, thread)),
            ObjEv::Disconnected(..) => panic!("disconnected"),
        }
    }
    assert_ne!(sessions[0].1, sessions[1].1, "one session on each worker");

    let (jtx, jrx) = mpsc::channel();
    for (i, (h, thread)) in sessions.iter().enumerate() {
        let want = h.id();
        for round in 0..3u64 {
            let jtx = jtx.clone();
            h.run::<Obj>(move |s, ctx| {
                let _ = jtx.send((thread_name(), ctx.worker_index(), ctx.id(), s.value));
                s.value += 10 * (i as u64 + 1);
            })
            .unwrap();
            let (name, worker, id, value) = recv(&jrx, "the job");
            assert_eq!(&name, thread, "runs on the session's worker thread");
            assert_eq!(name, format!("sc-server-{worker}"));
            assert_eq!(id, want, "with the session's own context");
            assert_eq!(value, round * 10 * (i as u64 + 1), "with the session's own object");
        }
    }

    // The wrong type: refused with a typed error, and the job does not run (the next job
    // to that session proves it).
    let (h, _) = &sessions[0];
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    match h.run::<Nop>(move |_, _| r.store(true, Ordering::Relaxed)) {
        Err(SendError::WrongSessionType { expected, given }) => {
            assert!(expected.ends_with("Obj") && given.ends_with("Nop"), "{expected} / {given}");
        }
        other => panic!("run with the wrong session type: {other:?}"),
    }
    let (otx, orx) = mpsc::channel();
    h.run::<Obj>(move |s, _| otx.send(s.value).unwrap()).unwrap();
    assert_eq!(recv(&orx, "the job after the wrong-type one"), 30);
    assert!(!ran.load(Ordering::Relaxed), "a job for another session type ran");

    // In order with sends; a job may send and disconnect.
    h.send(&b"first,"[..]).unwrap();
    h.run::<Obj>(|_, ctx| {
        ctx.send(&b"second"[..]).unwrap();
        ctx.disconnect("from a job");
    })
    .unwrap();
    let (bytes, _) = common::read_to_end(&mut clients[0]);
    assert_eq!(bytes, b"first,second");
    match recv(&rx, "on_disconnected") {
        ObjEv::Disconnected(id, reason) => {
            assert_eq!(id, h.id());
            assert_eq!(reason, DisconnectReason::Local("from a job".into()));
        }
        ObjEv::Connected(..) => panic!("unexpected connect"),
    }
    assert!(matches!(h.run::<Obj>(|_, _| {}), Err(SendError::Disconnected)));
    // The other session is unaffected.
    let (h1, _) = &sessions[1];
    let (otx, orx) = mpsc::channel();
    h1.run::<Obj>(move |s, _| otx.send(s.value).unwrap()).unwrap();
    assert_eq!(recv(&orx, "the other session's job"), 60);
    let mut c1 = clients.pop().unwrap();
    c1.write_all(b"still here").unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
}
