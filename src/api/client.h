/* `lookout ctl SOCKET CMD [KEY=VALUE...]`: the control socket's command-line client.
 *
 * argv[0] is the subcommand name ("ctl"), argv[1] the socket path, argv[2] the command; each
 * further KEY=VALUE becomes a request field (VALUE as JSON if it parses as a number, true, false
 * or null, else as a string).  Prints the reply line to stdout.  Returns the process exit status:
 * 0 if the reply says ok, 1 if it does not or the VM cannot be reached (with a message on stderr
 * saying why), 2 for a usage error. */
#pragma once

int ctl_main(int argc, char **argv);
