//! `sign` allocates nothing: counted by a global allocator in this test
//! binary, for the measuring thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use enos_sign_core::{
    ClientId, DeviceKey, DeviceSecret, ExposeSecret, HexCase, ProductKey, SignMethod, SignedFields,
    TimestampMs, sign, sign_with_case, verify_sign,
};

struct Counting;

/// Allocations made by threads that are counting; the test harness's own
/// threads (output capture, timers) allocate too and must not count.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count. Const-initialised, no
    /// destructor: safe to read from inside the allocator.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sign_and_verify_allocate_nothing() {
    let fields = SignedFields {
        client_id: ClientId::new("AA:BB:CC:DD:EE:FF").expect("valid"),
        device_key: DeviceKey::new("device-0001").expect("valid"),
        product_key: ProductKey::new("PkAbCd12").expect("valid"),
        timestamp: TimestampMs(u64::MAX),
    };
    let secret = DeviceSecret::new("0123456789abcdefABCDEF".to_owned()).expect("valid");
    // Warm up anything lazily initialised, then count.
    let warm = sign(&fields, SignMethod::HmacSha256, &secret);
    let presented = warm.expose_secret().to_owned();

    COUNTING.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut total_len = 0;
    for _ in 0..100 {
        for method in SignMethod::ALL {
            for case in [HexCase::Upper, HexCase::Lower] {
                total_len += sign_with_case(&fields, method, &secret, case)
                    .expose_secret()
                    .len();
            }
        }
    }
    verify_sign(&fields, SignMethod::HmacSha256, &presented, &secret).expect("verifies");
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;

    assert_eq!(total_len, 100 * 2 * (40 + 64 + 32));
    assert_eq!(
        allocations, 0,
        "sign/verify allocated {allocations} times in 601 calls"
    );
    // Prove the counter counts, so that 0 above means something.
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(16));
    assert!(
        ALLOCATIONS.load(Ordering::SeqCst) > before,
        "the counting allocator is not in use"
    );
    drop(v);
    COUNTING.with(|c| c.set(false));
}
