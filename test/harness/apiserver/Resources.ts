// The JSON the real API server sends; only the fields this simulation fills are typed.

export interface ObjectMeta {
  readonly name: string
  readonly namespace?: string
  readonly uid: string
  readonly resourceVersion: string
  readonly creationTimestamp: string
  readonly generateName?: string
  readonly labels?: Readonly<Record<string, string>>
  readonly annotations?: Readonly<Record<string, string>>
  readonly deletionTimestamp?: string
  readonly deletionGracePeriodSeconds?: number
}

export interface PodContainer {
  readonly name: string
  readonly image?: string
  readonly [field: string]: unknown
}

export interface PodSpec {
  readonly nodeName?: string
  readonly containers: ReadonlyArray<PodContainer>
  readonly terminationGracePeriodSeconds?: number
  readonly [field: string]: unknown
}

export interface PodStatus {
  readonly phase: "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown"
  readonly podIP?: string
  readonly hostIP?: string
  readonly [field: string]: unknown
}

export interface Pod {
  readonly apiVersion: "v1"
  readonly kind: "Pod"
  readonly metadata: ObjectMeta & { readonly namespace: string }
  readonly spec: PodSpec
  readonly status: PodStatus
}

export interface Secret {
  readonly apiVersion: "v1"
  readonly kind: "Secret"
  readonly metadata: ObjectMeta & { readonly namespace: string }
  readonly type: string
  /** base64 values, as on the wire */
  readonly data: Readonly<Record<string, string>>
}

export interface Node {
  readonly apiVersion: "v1"
  readonly kind: "Node"
  readonly metadata: ObjectMeta
  readonly status: {
    readonly addresses: ReadonlyArray<{ readonly type: string; readonly address: string }>
    readonly conditions: ReadonlyArray<{ readonly type: string; readonly status: string }>
  }
}

/** A core/v1 Event, as `kubectl describe` and `kubectl get events` show them. */
export interface KubernetesEvent {
  readonly apiVersion: "v1"
  readonly kind: "Event"
  readonly metadata: ObjectMeta & { readonly namespace: string }
  readonly involvedObject: {
    readonly kind?: string
    readonly namespace?: string
    readonly name?: string
    readonly uid?: string
    readonly [field: string]: unknown
  }
  readonly reason?: string
  readonly message?: string
  readonly type?: string
  readonly count?: number
  readonly [field: string]: unknown
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED"

export interface PodEvent {
  readonly type: WatchEventType
  readonly object: Pod
  /** The pod before the change (MODIFIED only): decides what a filtered watch sees. */
  readonly previous?: Pod
  readonly resourceVersion: number
}

export const keyOf = (namespace: string, name: string) => `${namespace}/${name}`

/** List items come without apiVersion/kind, as the real API server sends them. */
export const asListItem = <A extends { readonly apiVersion: string; readonly kind: string }>({
  apiVersion: _apiVersion,
  kind: _kind,
  ...rest
}: A) => rest
