//! The gateway's memory allocator: mimalloc (its v2 line) instead of glibc's malloc.
//!
//! A proxied request allocates ~25 times. Three of those are larger than glibc's per-thread
//! cache takes (1,032 bytes): the 8 KiB read buffer hyper allocates anew for each request, the
//! request's ~2.4 KiB boxed service future and the agent response's header map. Each went through glibc's bins and consolidated its fast
//! bins first. Under load glibc's allocator took ~17 % of the gateway's user time; mimalloc's
//! takes under half of that (BENCHMARKS.md, "The gateway against nginx"). The load bench's
//! baseline server includes this module too, so the layer's measured cost compares like with
//! like.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
