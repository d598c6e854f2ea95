{{/*
One mesh service: its Deployment (`inventory-mesh serve <svc>`), Service and ServiceAccount.
Context: dict "root" $ "service" "<svc>", where <svc> is a key of values.yaml.
*/}}
{{- define "inventory-mesh.service" -}}
{{- $root := .root }}
{{- $svc := .service }}
{{- $values := index $root.Values $svc }}
{{- if $values.enabled }}
{{- $name := include "inventory-mesh.componentName" (dict "root" $root "component" $svc) }}
{{- $scope := dict "root" $root "component" $svc }}
{{- $port := int $values.port }}
{{- $shutdown := $root.Values.shutdown }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  labels:
    {{- include "inventory-mesh.labels" $scope | nindent 4 }}
# The services never call the Kubernetes API.
automountServiceAccountToken: false
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "inventory-mesh.labels" $scope | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "inventory-mesh.selectorLabels" $scope | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "inventory-mesh.labels" $scope | nindent 4 }}
spec:
  replicas: {{ $values.replicaCount }}
  selector:
    matchLabels:
      {{- include "inventory-mesh.selectorLabels" $scope | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "inventory-mesh.labels" $scope | nindent 8 }}
      {{- /* GET /metrics (HTTP/1.1) is served on the gRPC port; podAnnotations win over these. */}}
      {{- $annotations := dict }}
      {{- if $root.Values.telemetry.prometheusScrape }}
      {{- $annotations = dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString $port) "prometheus.io/path" "/metrics" }}
      {{- end }}
      {{- with merge (deepCopy ($root.Values.podAnnotations | default dict)) $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # SIGTERM → NOT_SERVING → drain delay → grace for in-flight calls; the kill comes later.
      terminationGracePeriodSeconds: {{ add $shutdown.drainDelaySeconds $shutdown.graceSeconds $shutdown.killMarginSeconds }}
      containers:
        - name: {{ $svc }}
          image: {{ include "inventory-mesh.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["inventory-mesh"]
          args: ["serve", {{ $svc | quote }}]
          ports:
            - name: grpc
              containerPort: {{ $port }}
              protocol: TCP
          env:
            - name: MESH__{{ upper $svc }}__LISTEN_ADDR
              value: {{ printf "0.0.0.0:%d" $port | quote }}
            {{- include "inventory-mesh.commonEnv" $root | nindent 12 }}
            {{- /* This service's env wins over the global env. */}}
            {{- with merge (deepCopy $values.env) (deepCopy $root.Values.env) }}
            {{- include "inventory-mesh.extraEnv" . | trim | nindent 12 }}
            {{- end }}
          # Native gRPC probes against grpc.health.v1 ("" = the whole server); they take a port
          # number, not a name.
          startupProbe:
            grpc:
              port: {{ $port }}
            periodSeconds: {{ $values.probes.startup.periodSeconds }}
            failureThreshold: {{ $values.probes.startup.failureThreshold }}
            timeoutSeconds: {{ $values.probes.startup.timeoutSeconds }}
          readinessProbe:
            grpc:
              port: {{ $port }}
            periodSeconds: {{ $values.probes.readiness.periodSeconds }}
            failureThreshold: {{ $values.probes.readiness.failureThreshold }}
            successThreshold: {{ $values.probes.readiness.successThreshold }}
            timeoutSeconds: {{ $values.probes.readiness.timeoutSeconds }}
          livenessProbe:
            grpc:
              port: {{ $port }}
            periodSeconds: {{ $values.probes.liveness.periodSeconds }}
            failureThreshold: {{ $values.probes.liveness.failureThreshold }}
            timeoutSeconds: {{ $values.probes.liveness.timeoutSeconds }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- include "inventory-mesh.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        # The root filesystem is read-only; /tmp is the only writable path.
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
{{- end }}
{{- end }}
