/* The control socket server (`--api PATH`): a Unix stream socket speaking the line-delimited JSON
 * protocol of api/protocol.h, served by one thread with poll().
 *
 * Hostile clients cannot stall or crash the VM: every socket is non-blocking; a request line
 * longer than API_LINE_MAX gets an error reply and the connection is dropped; at most
 * API_MAX_CLIENTS connections are served (more get an error reply and are closed); a client that
 * does not read its replies is dropped once API_OUT_MAX bytes are waiting for it.
 * The socket file is created with mode 0600.  An existing path is replaced only if it is a stale
 * socket (nobody accepts connections on it); a live socket or any other file is an error. */
#pragma once

struct vm;
struct api_server;
struct api_ops;

#define API_MAX_CLIENTS 8
#define API_OUT_MAX     (64 * 1024)

/* NULL with err_set() on failure (path too long, in use, not a socket, bind failure...). */
struct api_server *api_start(struct vm *vm, const char *path);
/* The same with other machine operations (tests); ops NULL means the board's. */
struct api_server *api_start_ops(struct vm *vm, const char *path, const struct api_ops *ops);
/* Stops the thread, closes every connection and removes the socket file. */
void api_stop(struct api_server *s);
