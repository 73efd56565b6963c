/* Subcommands of build/iisan. Each takes the arguments after its name
 * (argv[0] is the subcommand), prints --help on request, and returns the
 * process exit code: 0 success, 1 runtime failure (bad file, I/O), 2 usage
 * error. Errors go to stderr as "iisan <cmd>: <message>". */
#ifndef IISAN_SERVER_CLI_H
#define IISAN_SERVER_CLI_H

int cmd_import(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_export(int argc, char **argv);      /* checkpoint -> safetensors */
int cmd_import_ckpt(int argc, char **argv); /* safetensors -> checkpoint */
int cmd_encode(int argc, char **argv);      /* text states from a BERT checkpoint */
int cmd_serve(int argc, char **argv);       /* the HTTP daemon (server/cmd_serve.c) */
int cmd_blas(int argc, char **argv);        /* the BLAS's kernels and sgemm rate */

#endif
