/** A kubeconfig for the harness's API server: its URL and CA, a bearer-token user, namespace `default`. */
export const kubeconfigYaml = (options: { server: string; caFile: string; token: string }) =>
  [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: harness",
    "  cluster:",
    `    server: ${options.server}`,
    `    certificate-authority: ${JSON.stringify(options.caFile)}`,
    "users:",
    "- name: checkpointer",
    "  user:",
    `    token: ${options.token}`,
    "contexts:",
    "- name: harness",
    "  context:",
    "    cluster: harness",
    "    user: checkpointer",
    "    namespace: default",
    "current-context: harness",
    ""
  ].join("\n")
